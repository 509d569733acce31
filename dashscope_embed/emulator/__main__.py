"""``python -m dashscope_embed.emulator``: serve the DashScope emulator until Ctrl-C."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

from dashscope_embed._extras import needs_extra


def _settings_class() -> Any:
    try:
        with needs_extra("The dashscope-emulator command", "emulator"):
            from dashscope_embed.emulator.state import EmulatorSettings
    except ModuleNotFoundError as error:
        raise SystemExit(str(error)) from None
    return EmulatorSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dashscope-emulator",
        description="Serve a local DashScope embedding service (native and "
        "OpenAI-compatible APIs) for offline tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    for field in fields(_settings_class()):
        flag = "--" + field.name.replace("_", "-")
        default = None if field.default is MISSING else field.default
        if field.type in ("bool", bool):
            # --flag / --no-flag: a setting on by default can be turned off too.
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help="(default: %(default)s)",
            )
            continue
        kind = {
            "float": float,
            "float | None": float,
            "int": int,
            "int | None": int,
            "str | None": str,
        }.get(str(field.type), str)
        parser.add_argument(flag, type=kind, default=default, help=f"(default {default})")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import logging

    try:
        with needs_extra("The dashscope-emulator command", "emulator"):
            import uvicorn

            from dashscope_embed.emulator.app import EmulatorApp
            from dashscope_embed.emulator.http import INJECTED_DROPS_FILTER
    except ModuleNotFoundError as error:
        raise SystemExit(str(error)) from None

    args = vars(build_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    settings = _settings_class()(**args)
    print(
        f"DashScope emulator on http://{host}:{port} "
        f"(native: /api/v1, OpenAI-compatible: /compatible-mode/v1); "
        f"key: {'as given' if settings.api_key else 'any sk-... key'}",
        flush=True,
    )
    logging.getLogger("uvicorn.error").addFilter(INJECTED_DROPS_FILTER)
    uvicorn.run(EmulatorApp(settings), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
