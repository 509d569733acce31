from __future__ import annotations

from pathlib import Path

from dashscope_embed._readme import BEGIN, END, models_table


def test_readme_models_table_matches_the_model_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert section == models_table(), "regenerate with: python -m dashscope_embed._readme"
