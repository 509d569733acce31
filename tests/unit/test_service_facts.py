"""The emulator's facts against the client's model table, and the emulator's structure.

The two tables are written separately (the emulator's from the API notes) so that a
wrong client limit is caught by the emulator refusing a request. Every difference
between them is named here; a new one fails this test until it is understood.
"""

from __future__ import annotations

import ast
from pathlib import Path

from dashscope_embed.emulator.facts import SERVICE_MODELS
from dashscope_embed.models import MODELS

EMULATOR = Path(__file__).resolve().parents[2] / "dashscope_embed" / "emulator"

# Each known difference, and why it is there.
KNOWN_DIFFERENCES = {
    # Pages disagree (international: 1024/768/512; China page and Java SDK: also
    # 256/128/64). The client allows all six so neither reading blocks a user; the
    # emulator takes the strict one, so the client's handling of the refusal is tested.
    ("text-embedding-v3", "dimensions"),
    # Older page: one text, one image and one video per call. The client sends one
    # content per request, which is right under every reading.
    ("multimodal-embedding-v1", "max_rows"),
}


def differences() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    hosted = {name for name, spec in MODELS.items() if spec.hosting == "dashscope"}
    for name in hosted | set(SERVICE_MODELS):
        client, service = MODELS.get(name), SERVICE_MODELS.get(name)
        if client is None or service is None:
            found.add((name, "missing from " + ("the client" if client is None else "emulator")))
            continue
        pairs = {
            "kind": (client.kind, service.kind),
            "max_rows": (client.max_rows, service.max_rows),
            "max_tokens_per_row": (client.max_tokens_per_row, service.max_tokens_per_row),
            "dimensions": (set(client.dimensions), set(service.dimensions)),
            "default_dimension": (client.default_dimension, service.default_dimension),
            "configurable_dimension": (
                client.configurable_dimension,
                service.configurable_dimension,
            ),
            "sparse": (client.supports_sparse, service.sparse),
            "instruct": (client.supports_instruct, service.instruct),
            "openai_compatible": (client.openai_compatible, service.openai_compatible),
        }
        media = client.media
        if media is not None or service.kind == "multimodal":
            pairs |= {
                "image_bytes": (media and media.image_bytes, service.max_image_bytes),
                "image_formats": (
                    media and set(media.image_formats),
                    set(service.image_formats) - {"dib"},  # the client reads a DIB as BMP
                ),
                "video_bytes": (media and media.video_bytes, service.max_video_bytes),
                "video_formats": (media and set(media.video_formats), set(service.video_formats)),
                "fusion": (media and media.fusion, service.fusion),
                "one_of_each_modality": (
                    media and media.one_of_each_modality,
                    service.one_of_each_modality,
                ),
                "snapshot_parameters": (
                    media and {"res_level", "max_video_frames"} <= media.parameters,
                    service.snapshot_parameters,
                ),
                "truncates_text": (media and media.truncates_text, service.truncates_text),
            }
        found |= {(name, key) for key, (a, b) in pairs.items() if a != b}
    return found


def test_the_client_and_the_emulator_differ_only_where_named() -> None:
    assert differences() == KNOWN_DIFFERENCES


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "dashscope_embed.emulator":  # from the package, a module
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_the_emulator_imports_nothing_of_the_client_and_has_no_cycle() -> None:
    modules = {p.stem: _imports(p) for p in EMULATOR.glob("*.py") if p.stem != "__init__"}
    for name, imported in modules.items():
        # _extras is packaging plumbing (which extra brings which module), no facts.
        client_side = (
            {m for m in imported if m.startswith("dashscope_embed.")}
            - {m for m in imported if m.startswith("dashscope_embed.emulator")}
            - {"dashscope_embed._extras"}
        )
        assert not client_side, f"emulator/{name}.py imports {sorted(client_side)}"
    graph = {
        name: {m.rsplit(".", 1)[-1] for m in imported if m.startswith("dashscope_embed.emulator.")}
        for name, imported in modules.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert not cycles, f"import cycle through {cycles}"
