"""A user who installed fewer extras than we did: each optional feature, used without its
extra, fails with the extra's name and the ``pip install`` line, never a bare
``ModuleNotFoundError`` from deep inside an import; and what needs no extra still works.

Each case runs in a fresh interpreter in which the extra's modules cannot be imported
(an import hook refuses them, as if they were not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dashscope_embed._extras import EXTRA_MODULES, MissingExtraError
from dashscope_embed.emulator import Emulator

ROOT = Path(__file__).parents[2]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set({blocked!r})
    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, NotInstalled())
    """
)


def run_without(
    blocked: set[str], code: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    program = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
        check=False,
    )


EMULATOR_MODULES = set(EXTRA_MODULES["emulator"])


def test_pytest_runs_for_a_user_without_the_emulator_extra(tmp_path: Path) -> None:
    """The plugin is registered on every install; loading it must cost nothing."""
    run = run_without(
        EMULATOR_MODULES,
        "import pytest, sys; sys.exit(pytest.main(['--co', '-q', '-p', 'no:cacheprovider']))",
        cwd=tmp_path,
    )
    assert run.returncode == 5, run.stdout + run.stderr  # 5: collected nothing, no error
    assert "ModuleNotFoundError" not in run.stdout + run.stderr


def test_the_fixture_without_the_emulator_extra_names_it(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text(
        "def test_app(dashscope_emulator):\n    assert dashscope_emulator\n", encoding="utf-8"
    )
    run = run_without(
        EMULATOR_MODULES,
        "import pytest, sys; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider']))",
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert "pip install 'dashscope-embed[emulator]'" in run.stdout


def test_the_core_works_without_any_extra(dashscope_emulator: Emulator) -> None:
    """httpx and pydantic only: JSON parsed without orjson, tokens estimated without the
    tokenizer, embeddings and rerank over HTTP."""
    every_extra = set().union(*EXTRA_MODULES.values())
    run = run_without(
        every_extra,
        f"""
        import dashscope_embed.emulator  # the package itself: what the plugin imports
        from dashscope_embed import DashScopeClient
        client = DashScopeClient(api_key={dashscope_emulator.api_key!r},
                                 base_url={dashscope_emulator.base_url!r})
        result = client.embed(["bare", "install"], dimension=64)
        assert len(result.require_dense()[1]) == 64
        assert client.rerank("bare", ["a bare install", "other"]).indices == [0, 1]
        import sys
        assert not {{"numpy", "orjson", "dashscope"}} & set(sys.modules)
        """,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("blocked", "code", "extra"),
    [
        ({"llama_index"}, "import llama_index_ext", "llama-index"),
        ({"langchain_core"}, "import langchain_ext", "langchain"),
        ({"numpy"}, "from dashscope_embed.emulator import Emulator", "emulator"),
        ({"orjson"}, "from dashscope_embed.emulator import service_or_emulator", "emulator"),
        ({"uvicorn"}, "from dashscope_embed.emulator import Emulator; Emulator()", "emulator"),
    ],
    ids=["llama-index", "langchain", "emulator-numpy", "emulator-orjson", "emulator-uvicorn"],
)
def test_an_import_without_its_extra_names_the_extra(
    blocked: set[str], code: str, extra: str
) -> None:
    run = run_without(blocked, code)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("dashscope_embed._extras.MissingExtraError"), run.stderr
    assert f"pip install 'dashscope-embed[{extra}]'" in last


def test_the_emulator_command_without_its_extra_says_which() -> None:
    run = run_without(
        {"uvicorn"}, "from dashscope_embed.emulator.__main__ import main; main(['--port', '0'])"
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "pip install 'dashscope-embed[emulator]'" in run.stderr


@pytest.mark.parametrize(
    ("out", "blocked"), [("vectors.npy", {"numpy"}), ("vectors.parquet", {"pyarrow"})]
)
def test_bulk_output_without_its_extra_stops_before_anything_is_sent(
    tmp_path: Path, dashscope_emulator: Emulator, out: str, blocked: set[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "one"}) + "\n", encoding="utf-8")
    run = run_without(
        blocked,
        f"""
        import os, sys
        os.environ["DASHSCOPE_API_KEY"] = {dashscope_emulator.api_key!r}
        from dashscope_embed.cli import main
        main(["embed", {str(corpus)!r}, "--out", {str(tmp_path / out)!r},
              "--base-url", {dashscope_emulator.base_url!r}, "--quiet"])
        """,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "pip install 'dashscope-embed[bulk]'" in run.stderr
    assert dashscope_emulator.stats()["requests"] == 0


def test_as_numpy_without_numpy_names_the_extra(dashscope_emulator: Emulator) -> None:
    run = run_without(
        {"numpy"},
        f"""
        from dashscope_embed import DashScopeClient
        client = DashScopeClient(api_key={dashscope_emulator.api_key!r},
                                 base_url={dashscope_emulator.base_url!r})
        next(client.embed_stream(["one"], as_numpy=True))
        """,
    )
    assert "pip install 'dashscope-embed[bulk]'" in run.stderr.strip().splitlines()[-1]


def test_as_numpy_without_pysimdjson_reads_replies_the_reference_way(
    dashscope_emulator: Emulator,
) -> None:
    """numpy alone (no pysimdjson) is enough: replies go through the reference parser."""
    run = run_without(
        {"simdjson"},
        f"""
        import numpy as np
        from dashscope_embed import DashScopeClient
        from dashscope_embed.protocol import arrays
        assert not arrays.HAVE_SIMDJSON
        client = DashScopeClient(api_key={dashscope_emulator.api_key!r},
                                 base_url={dashscope_emulator.base_url!r})
        texts = [f"t{{i}}" for i in range(25)]
        got = np.concatenate([c.array for c in client.embed_stream(texts, as_numpy=True)])
        want = np.asarray(client.embed(texts).require_dense(), dtype=np.float32)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        """,
    )
    assert run.returncode == 0, run.stderr


def test_the_error_is_an_import_error_and_survives_pickling() -> None:
    import pickle

    error = MissingExtraError("as_numpy=True", "bulk", "numpy")
    assert isinstance(error, ImportError) and error.name == "numpy"
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error)


def test_the_extras_table_matches_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    distribution_module = {
        "llama-index-core": "llama_index",
        "langchain-core": "langchain_core",
        "uvicorn": "uvicorn",
        "numpy": "numpy",
        "orjson": "orjson",
        "pyarrow": "pyarrow",
        "pysimdjson": "simdjson",
        "dashscope": "dashscope",
        "tiktoken": "tiktoken",
        "ray": "ray",
    }
    for extra, modules in EXTRA_MODULES.items():
        names = {
            requirement.split(">")[0].split("=")[0].split("[")[0].strip()
            for requirement in extras[extra]
        }
        assert {distribution_module[name] for name in names} == modules, extra


@pytest.mark.parametrize(
    ("absent", "code", "package"),
    [
        ("langchain_qdrant", "embeddings.sparse_companion()", "langchain-qdrant"),
        ("langchain_milvus", "embeddings.milvus_sparse()", "langchain-milvus"),
        (
            "llama_index.vector_stores.milvus",
            "llama_embedding.milvus_sparse_function()",
            "llama-index-vector-stores-milvus",
        ),
    ],
)
def test_a_vector_store_glue_without_its_package_names_the_package(
    absent: str, code: str, package: str
) -> None:
    """Each store's integration is the user's pick, not one of our extras: the error
    names the class that needs it and the package to install."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            f"sys.modules[{absent!r}] = None  # as if it were not installed\n"
            "from langchain_ext import DashScopeEmbeddings\n"
            "from llama_index_ext import DashScopeEmbedding\n"
            "embeddings = DashScopeEmbeddings(api_key='sk-x', output_type='dense&sparse')\n"
            "llama_embedding = DashScopeEmbedding(api_key='sk-x', output_type='dense&sparse')\n"
            f"{code}\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: DashScope") and last.endswith(f": pip install {package}")
