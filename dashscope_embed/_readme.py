"""Render the README's models table from the model table (kept in sync by a test)."""

from __future__ import annotations

from dashscope_embed.models import MODELS

BEGIN = "<!-- models-table:begin -->"
END = "<!-- models-table:end -->"


def models_table() -> str:
    """A Markdown table of every built-in model's limits and capabilities."""
    rows = [
        "| model | kind | rows / request | tokens / text | dimensions (default **bold**) "
        "| sparse | instruct | OpenAI-compatible | CNY / 1K tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in MODELS.values():
        dims = ", ".join(
            f"**{d}**" if d == spec.default_dimension else str(d)
            for d in sorted(spec.dimensions, reverse=True)
        )
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {spec.max_rows:,} | {spec.max_tokens_per_row:,} "
            f"| {dims} | {'yes' if spec.supports_sparse else '-'} "
            f"| {'yes' if spec.supports_instruct else '-'} "
            f"| {'yes' if spec.openai_compatible else '-'} | {spec.price_cny_per_1k_tokens} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(models_table())
