from __future__ import annotations

from pathlib import Path

from dashscope_embed._readme import (
    BEGIN,
    END,
    MEDIA_BEGIN,
    MEDIA_END,
    RERANK_BEGIN,
    RERANK_END,
    media_table,
    models_table,
    rerank_models_table,
)

README = Path(__file__).parents[2] / "README.md"


def test_readme_models_table_matches_the_model_table() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert section == models_table(), "regenerate with: python -m dashscope_embed._readme"


def test_readme_rerank_models_table_matches_the_rerank_model_table() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split(RERANK_BEGIN, 1)[1].split(RERANK_END, 1)[0].strip()
    assert section == rerank_models_table(), "regenerate with: python -m dashscope_embed._readme"


def test_readme_media_table_matches_the_model_table() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split(MEDIA_BEGIN, 1)[1].split(MEDIA_END, 1)[0].strip()
    assert section == media_table(), "regenerate with: python -m dashscope_embed._readme"
