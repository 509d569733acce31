"""Render the README's model tables from the model tables (kept in sync by a test)."""

from __future__ import annotations

from dashscope_embed.models import MODELS, RERANK_MODELS

BEGIN = "<!-- models-table:begin -->"
END = "<!-- models-table:end -->"
RERANK_BEGIN = "<!-- rerank-models-table:begin -->"
RERANK_END = "<!-- rerank-models-table:end -->"
MEDIA_BEGIN = "<!-- media-table:begin -->"
MEDIA_END = "<!-- media-table:end -->"
_FUSION = {
    "parameter": "`enable_fusion`: one fused item per request",
    "object": "text + image + video in one content object",
    "always": "every request is one vector",
    "none": "-",
}


def models_table() -> str:
    """A Markdown table of every built-in model's limits and capabilities."""
    rows = [
        "| model | kind | rows / request | tokens / text | dimensions (default **bold**) "
        "| sparse | instruct | OpenAI-compatible | CNY / 1K tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in MODELS.values():
        if spec.hosting != "dashscope":
            continue
        dims = ", ".join(
            f"**{d}**" if d == spec.default_dimension else str(d)
            for d in sorted(spec.dimensions, reverse=True)
        )
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {spec.max_rows:,} | {spec.max_tokens_per_row:,} "
            f"| {dims} | {'yes' if spec.supports_sparse else '-'} "
            f"| {'yes' if spec.supports_instruct else '-'} "
            f"| {'yes' if spec.openai_compatible else '-'} "
            f"| {'-' if spec.price_cny_per_1k_tokens is None else spec.price_cny_per_1k_tokens} |"
        )
    return "\n".join(rows)


def rerank_models_table() -> str:
    """A Markdown table of every built-in rerank model's endpoint and limits."""
    rows = [
        "| model | endpoint | documents / request | tokens / document | tokens / request "
        "| instruct | documents may be | USD / 1M tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in RERANK_MODELS.values():
        if spec.family == "rerank-self-hosted":
            continue
        endpoint = (
            "`/compatible-api/v1/reranks`"
            if spec.family == "rerank-openai"
            else "`/api/v1/services/rerank/text-rerank/text-rerank`"
        )
        kinds = ", ".join(
            f"{kind} ({spec.max_per_modality[kind]})" if kind in spec.max_per_modality else kind
            for kind in spec.modalities
        )
        price = "-" if spec.price_usd_per_1m_tokens is None else spec.price_usd_per_1m_tokens
        rows.append(
            f"| `{spec.name}` | {endpoint} | {spec.max_documents:,} "
            f"| {spec.max_tokens_per_document:,} | {spec.max_tokens_per_request:,} "
            f"| {'yes' if spec.supports_instruct else '-'} | {kinds} | {price} |"
        )
    return "\n".join(rows)


def media_table() -> str:
    """A Markdown table of every multimodal model's image, video and fusion rules."""
    rows = [
        "| model | contents / request | image (largest; formats) | video (largest; formats) "
        "| fused vectors | also takes |",
        "|---|---|---|---|---|---|",
    ]
    for spec in MODELS.values():
        media = spec.media
        if media is None:
            continue

        def limit(size: int, formats: tuple[str, ...]) -> str:
            return f"{size // (1024 * 1024)} MB; {', '.join(f.upper() for f in formats)}"

        takes = sorted(media.parameters) + (["instruct"] if spec.supports_instruct else [])
        rows.append(
            f"| `{spec.name}` | {spec.max_rows} | {limit(media.image_bytes, media.image_formats)} "
            f"| {limit(media.video_bytes, media.video_formats)} | {_FUSION[media.fusion]} "
            f"| {', '.join(f'`{t}`' for t in takes) or '-'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(models_table())
    print()
    print(rerank_models_table())
    print()
    print(media_table())
