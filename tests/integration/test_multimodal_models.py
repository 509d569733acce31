"""The current multimodal models over loopback HTTP, with the official SDK as a second
client: each model's wire body and limits, fused vectors, several contents per request,
the upload flow (and where the key goes), bad input named before sending, and faults
with nothing lost or paid twice."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dashscope.v2 import Client as DashScopeV2

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator
from dashscope_embed.errors import BadResponseError, InvalidInputError
from dashscope_embed.models import MODELS
from dashscope_embed.multimodal import Content, Fused
from dashscope_embed.retry import RetryPolicy
from tests.integration.hostile import Conn, RawRequest, hostile, response_bytes
from tests.integration.media import GIF, mp4, png, write

CURRENT = [
    "qwen3-vl-embedding",
    "tongyi-embedding-vision-plus",
    "tongyi-embedding-vision-flash",
    "tongyi-embedding-vision-plus-2026-03-06",
    "tongyi-embedding-vision-flash-2026-03-06",
]
FAST_RETRY = RetryPolicy(max_retries=8, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def client(dashscope_emulator: Emulator) -> DashScopeClient:
    return DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url, retry=FAST_RETRY
    )


@pytest.fixture
def sdk(dashscope_emulator: Emulator) -> DashScopeV2:
    return DashScopeV2(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.native_base_url,
        max_retries=0,
    )


def embed(client: DashScopeClient, mode: str, items: list[Any], **options: Any) -> list[Any]:
    if mode == "async":
        result = asyncio.run(client.aembed_multimodal(items, **options))
    else:
        result = client.embed_multimodal(items, **options)
    return result.require_dense()


def bodies(emulator: Emulator) -> list[dict[str, Any]]:
    return [r["json"] for r in emulator.requests("multimodal-embedding")]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------------- per model
@pytest.mark.parametrize("model", CURRENT)
def test_each_model_sends_its_body_and_gets_the_sdks_vectors(
    model: str, client: DashScopeClient, sdk: DashScopeV2, dashscope_emulator: Emulator
) -> None:
    url = dashscope_emulator.put_file("red_car.png", png("red car"))
    size = min(MODELS[model].dimensions)
    ours = client.embed_multimodal(
        [Content.text("a red car"), Content.image(url)], model=model, dimension=size
    )
    assert bodies(dashscope_emulator) == [
        {
            "model": model,
            "input": {"contents": [{"text": "a red car"}, {"image": url}]},
            "parameters": {"dimension": size},
        }
    ]
    theirs = sdk.multimodal.embeddings.create(
        model=model, input=[{"text": "a red car"}, {"image": url}], dimension=size
    )
    assert np.allclose(ours.require_dense(), [e.embedding for e in theirs.embeddings])
    assert [len(v) for v in ours.require_dense()] == [size, size]


def test_a_text_finds_the_image_that_shows_it(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    pictures = {
        "red sports car": png("red sports car"),
        "blue sailing boat": png("blue sailing boat", colour=(0, 0, 255)),
        "green oak tree": png("green oak tree", colour=(0, 255, 0)),
    }
    images = embed(
        client,
        "sync",
        [Content.image(data) for data in pictures.values()],
        model="qwen3-vl-embedding",
    )
    for position, caption in enumerate(pictures):
        query = client.embed_multimodal(
            [Content.text(f"a photo of a {caption}")],
            model="qwen3-vl-embedding",
            instruct="Find the photo that matches the description",
        ).require_dense()[0]
        scores = [cosine(query, image) for image in images]
        assert int(np.argmax(scores)) == position, (caption, scores)


# ---------------------------------------------------------------------- fusion
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_qwen3_vl_fuses_each_fused_item_in_a_request_of_its_own(
    mode: str, client: DashScopeClient, sdk: DashScopeV2, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(latency=0.05)
    shoe, hat = png("red shoe"), png("blue hat", colour=(0, 0, 255))
    items: list[Any] = [Content.text(f"caption {i}") for i in range(25)]
    items.insert(3, Fused("red running shoe", Content.image(shoe)))
    items.append(Fused("blue wool hat", Content.image(hat)))
    vectors = embed(client, mode, items, model="qwen3-vl-embedding", dimension=256)
    sent = bodies(dashscope_emulator)
    fused = [b for b in sent if b["parameters"].get("enable_fusion") is True]
    assert len(fused) == 2 and len(sent) == 4  # 25 singles: 20 + 5, and one per fused item
    assert all(len(b["input"]["contents"]) == 2 for b in fused)
    assert sorted(len(b["input"]["contents"]) for b in sent if b not in fused) == [5, 20]
    reference = sdk.multimodal.embeddings.create(
        model="qwen3-vl-embedding",
        input=[{"text": "red running shoe"}, {"image": Content.image(shoe).value}],
        dimension=256,
        enable_fusion=True,
    )
    assert len(reference.embeddings) == 1
    assert np.allclose(vectors[3], reference.embeddings[0].embedding)
    single = sdk.multimodal.embeddings.create(
        model="qwen3-vl-embedding", input=[{"text": "caption 7"}], dimension=256
    )
    assert np.allclose(vectors[8], single.embeddings[0].embedding)  # order kept around it
    assert dashscope_emulator.stats()["peak_concurrency"] > 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_snapshot_models_fuse_in_one_content_object(
    mode: str, client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    model = "tongyi-embedding-vision-plus-2026-03-06"
    photo = Content.image(png("leather handbag"))
    items: list[Any] = [Fused("brown leather handbag", photo), Content.text("handbag"), photo]
    vectors = embed(client, mode, items, model=model, res_level=2, max_video_frames=16)
    (body,) = bodies(dashscope_emulator)
    assert body["input"]["contents"] == [
        {"text": "brown leather handbag", "image": photo.value},
        {"text": "handbag"},
        {"image": photo.value},
    ]
    assert body["parameters"] == {"res_level": 2, "max_video_frames": 16}
    # The fused vector sits between its parts.
    assert cosine(vectors[0], vectors[2]) > 0.3 and cosine(vectors[0], vectors[1]) > 0.3
    assert cosine(vectors[0], vectors[2]) < 0.99


def test_qwen25_vl_sends_each_item_as_one_fused_request(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    items: list[Any] = [Content.text("a"), Fused("b", Content.image(png("b"))), Content.text("c")]
    vectors = client.embed_multimodal(items, model="qwen2.5-vl-embedding").require_dense()
    sent = bodies(dashscope_emulator)
    assert sorted(len(b["input"]["contents"]) for b in sent) == [1, 1, 2]
    assert all("enable_fusion" not in b["parameters"] for b in sent)
    assert [len(v) for v in vectors] == [1024] * 3


def test_fusion_the_model_cannot_do_is_refused_before_sending(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        client.embed_multimodal(
            [Content.text("x"), Fused("y", Content.image(png()))],
            model="tongyi-embedding-vision-plus",
        )
    message = str(refused.value)
    assert message.startswith("contents[1]: tongyi-embedding-vision-plus makes no fused vectors")
    assert "qwen3-vl-embedding" in message
    with pytest.raises(InvalidInputError, match=r"contents\[0\]: .* 2 images"):
        client.embed_multimodal(
            [Fused("two photos", Content.image(png("a")), Content.image(png("b")))],
            model="tongyi-embedding-vision-flash-2026-03-06",
        )
    with pytest.raises(InvalidInputError, match="fuses at most 20 parts"):
        client.embed_multimodal(
            [Fused(*[f"part {i}" for i in range(21)])], model="qwen3-vl-embedding"
        )
    assert dashscope_emulator.stats()["requests"] == 0


# ---------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ("qwen3-vl-embedding", lambda tmp: Content.image(GIF), {}, "does not take GIF images"),
    (
        "tongyi-embedding-vision-plus",
        lambda tmp: Content.image(png(pad=4 * 1024 * 1024)),
        {},
        r"is 4\.0 MB; tongyi-embedding-vision-plus takes images of at most 3\.0 MB",
    ),
    (
        "qwen3-vl-embedding",
        lambda tmp: Content.video("https://example.com/clip.mkv"),
        {},
        "does not take MKV videos; it takes MP4, AVI, MOV",
    ),
    (
        "qwen3-vl-embedding",
        lambda tmp: Content.video(_sparse_file(tmp / "long.mp4", 60 * 1024 * 1024)),
        {},
        r"video 'long\.mp4' is 60\.0 MB; qwen3-vl-embedding takes videos of at most 50\.0 MB",
    ),
    (
        "tongyi-embedding-vision-plus",
        lambda tmp: Content.text("word " * 3000),
        {},
        "tongyi-embedding-vision-plus takes at most 1,024",
    ),
    (
        "qwen3-vl-embedding",
        lambda tmp: Content.text("x"),
        {"res_level": 1},
        "does not take res_level",
    ),
    ("qwen3-vl-embedding", lambda tmp: Content.text("x"), {"fps": 1.5}, "fps"),
    (
        "tongyi-embedding-vision-flash-2026-03-06",
        lambda tmp: Content.text("x"),
        {"dimension": 1152},
        "dimension=1152 is not allowed",
    ),
    ("qwen3-vl-embedding", lambda tmp: Content.text("x"), {"enable_fusion": True}, "unknown"),
]


def _sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        file.write(mp4(1024))
        file.truncate(size)
    return path


@pytest.mark.parametrize(("model", "build", "options", "message"), BAD_INPUTS)
def test_bad_input_is_named_before_anything_is_sent(
    model: str,
    build: Any,
    options: dict[str, Any],
    message: str,
    client: DashScopeClient,
    dashscope_emulator: Emulator,
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        client.embed_multimodal([Content.text("fine"), build(tmp_path)], model=model, **options)
    assert dashscope_emulator.stats()["requests"] == 0
    assert dashscope_emulator.stats()["uploads"] == 0


def test_the_emulator_refuses_what_the_client_would_have(
    sdk: DashScopeV2, dashscope_emulator: Emulator
) -> None:
    """The same refusals from the service's side, for clients that do not check."""
    from dashscope.v2 import errors as v2_errors

    cases = [
        ("tongyi-embedding-vision-plus", [{"text": "a", "image": "https://x/a.png"}], {}),
        ("qwen3-vl-embedding", [{"video": "https://x/a.mkv"}], {}),
        ("tongyi-embedding-vision-plus", [{"text": "x"}], {"enable_fusion": True}),
        ("qwen3-vl-embedding", [{"text": "x"}], {"res_level": 1}),
        ("qwen2.5-vl-embedding", [{"text": "a"}, {"text": "b"}], {}),
        ("qwen3-vl-embedding", [{"text": str(i)} for i in range(21)], {}),
    ]
    for model, contents, options in cases:
        with pytest.raises(v2_errors.BadRequestError):
            sdk.multimodal.embeddings.create(model=model, input=contents, **options)


# ---------------------------------------------------------------------- uploads
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_local_videos_and_large_images_are_uploaded_and_the_key_stays_home(
    mode: str,
    client: DashScopeClient,
    sdk: DashScopeV2,
    dashscope_emulator: Emulator,
    tmp_path: Path,
) -> None:
    video = write(tmp_path / "cat_playing.mp4", mp4(200_000))
    big = write(tmp_path / "red_car.png", png("red car", pad=4 * 1024 * 1024))
    small = write(tmp_path / "blue_boat.png", png("blue boat"))
    items: list[Any] = [
        Content.video(video),
        Content.image(big),
        Content.image(small),  # small: inline, not uploaded
        Fused("a cat playing", Content.video(video)),  # the same file, uploaded once
    ]
    vectors = embed(client, mode, items, model="qwen3-vl-embedding", dimension=256)
    stats = dashscope_emulator.stats()
    assert stats["uploads"] == 2 and stats["keys_sent_to_upload_host"] == 0
    (policy,) = dashscope_emulator.requests("/uploads")
    assert policy["method"] == "GET"
    assert policy["query"] == {"action": "getPolicy", "model": "qwen3-vl-embedding"}
    sent = dashscope_emulator.requests("multimodal-embedding")
    assert all(r["headers"].get("x-dashscope-ossresourceresolve") == "enable" for r in sent)
    # The three single items share a request; the fused one has its own (either first).
    (contents,) = [
        r["json"]["input"]["contents"]
        for r in sent
        if "enable_fusion" not in r["json"]["parameters"]
    ]
    assert contents[0]["video"].startswith("oss://") and contents[0]["video"].endswith(
        "-cat_playing.mp4"
    )
    assert contents[1]["image"].startswith("oss://")
    assert contents[2]["image"].startswith("data:image/png;base64,")
    # The official SDK uploads the same file its own way; the service sees the same video.
    theirs = sdk.multimodal.embeddings.create(
        model="qwen3-vl-embedding", input=[{"video": str(video)}], dimension=256
    )
    assert np.allclose(vectors[0], theirs.embeddings[0].embedding)


def test_an_oss_reference_without_the_resolve_header_is_refused_by_the_emulator(
    dashscope_emulator: Emulator, client: DashScopeClient, tmp_path: Path
) -> None:
    import httpx

    video = write(tmp_path / "dog.mp4", mp4())
    client.embed_multimodal([Content.video(video)], model="qwen3-vl-embedding")
    oss = bodies(dashscope_emulator)[0]["input"]["contents"][0]["video"]
    reply = httpx.post(
        dashscope_emulator.native_base_url
        + "/services/embeddings/multimodal-embedding/multimodal-embedding",
        json={"model": "qwen3-vl-embedding", "input": {"contents": [{"video": oss}]}},
        headers={"Authorization": f"Bearer {dashscope_emulator.api_key}"},
    )
    assert reply.status_code == 400 and "X-DashScope-OssResourceResolve" in reply.text


def _policy(upload_host: str, max_mb: float = 100) -> bytes:
    data = {
        "policy": "cG9saWN5",
        "signature": "c2ln",
        "upload_dir": "dashscope-instant/abc",
        "upload_host": upload_host,
        "expire_in_seconds": 300,
        "max_file_size_mb": max_mb,
        "oss_access_key_id": "LTAI-test",
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    return json.dumps({"request_id": "rid-policy", "data": data}).encode()


def _multimodal_reply(size: int) -> bytes:
    vector = [1.0] + [0.0] * (size - 1)
    return json.dumps(
        {
            "output": {"embeddings": [{"index": 0, "type": "video", "embedding": vector}]},
            "usage": {"input_tokens": 0},
            "request_id": "rid-embed",
        }
    ).encode()


def test_the_upload_host_never_gets_the_key_and_a_plain_http_remote_one_is_refused(
    tmp_path: Path,
) -> None:
    video = write(tmp_path / "clip.mp4", mp4())
    with hostile(lambda request, conn: conn.send(response_bytes(200, b""))) as storage:

        def service(request: RawRequest, conn: Conn) -> None:
            if request.path.startswith("/api/v1/uploads"):
                conn.send(response_bytes(200, _policy(storage.base_url + "/bucket")))
            else:
                conn.send(response_bytes(200, _multimodal_reply(256)))

        with hostile(service) as server:
            client = DashScopeClient(
                api_key="sk-secret-upload-test",
                base_url=server.base_url,
                workspace="ws-1",
                retry=FAST_RETRY,
            )
            vector = client.embed_multimodal(
                [Content.video(video)], model="qwen3-vl-embedding", dimension=256
            ).require_dense()[0]
    assert vector[0] == 1.0
    (upload,) = storage.requests
    assert "authorization" not in upload.headers and "x-dashscope-workspace" not in upload.headers
    assert b"sk-secret-upload-test" not in upload.body
    assert b'name="key"' in upload.body and b"dashscope-instant/abc/" in upload.body
    assert server.requests[0].headers["authorization"] == "Bearer sk-secret-upload-test"
    embed_request = server.requests[-1]
    assert embed_request.headers["x-dashscope-ossresourceresolve"] == "enable"

    for host, error, match in (
        ("http://uploads.example.com/", BadResponseError, "only sent over https"),
        (storage.base_url, InvalidInputError, r"storage takes files of at most 0 MB"),
    ):
        max_mb = 100 if "example" in host else 0.001
        with hostile(
            lambda request, conn, host=host, max_mb=max_mb: conn.send(  # type: ignore[misc]
                response_bytes(200, _policy(host, max_mb))
            )
        ) as server:
            client = DashScopeClient(api_key="sk-x", base_url=server.base_url, retry=FAST_RETRY)
            with pytest.raises(error, match=match):
                client.embed_multimodal([Content.video(video)], model="qwen3-vl-embedding")
            assert len(server.requests) == 1  # the policy only; nothing embedded


# ---------------------------------------------------------------------- faults
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_faults_lose_nothing_and_pay_nothing_twice(
    mode: str, client: DashScopeClient, dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    items: list[Any] = [Content.image(png(f"item {i}", colour=(i, 0, 0))) for i in range(30)]
    items += [Fused(f"caption {i}", Content.text(f"detail {i}")) for i in range(6)]
    items.append(Content.video(write(tmp_path / "clip.mp4", mp4())))
    dashscope_emulator.configure(latency=0.05)
    clean = embed(client, mode, items, model="qwen3-vl-embedding", dimension=256)
    assert dashscope_emulator.stats()["peak_concurrency"] > 1
    dashscope_emulator.reset()
    dashscope_emulator.configure(error_rate=0.3, drop_rate=0.1, seed=7)
    faulty = embed(client, mode, items, model="qwen3-vl-embedding", dimension=256)
    assert np.allclose(faulty, clean)
    stats = dashscope_emulator.stats()
    assert stats["injected_errors"] + stats["dropped_connections"] > 0
    assert stats["duplicate_embeddings"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_upload_whose_reply_was_lost_is_not_an_error(mode: str, tmp_path: Path) -> None:
    """The storage kept the file but the connection dropped before its reply; the resend
    is refused as an overwrite (409). The key names the file's digest, so it is there."""
    video = write(tmp_path / "clip.mp4", mp4())
    attempts: list[bytes] = []

    def storage_handler(request: RawRequest, conn: Conn) -> None:
        attempts.append(request.body)
        if len(attempts) == 1:
            conn.drop()
        else:
            conn.send(response_bytes(409, b"<Error><Code>FileAlreadyExists</Code></Error>"))

    with hostile(storage_handler) as storage:

        def service(request: RawRequest, conn: Conn) -> None:
            if request.path.startswith("/api/v1/uploads"):
                conn.send(response_bytes(200, _policy(storage.base_url)))
            else:
                conn.send(response_bytes(200, _multimodal_reply(256)))

        with hostile(service) as server:
            client = DashScopeClient(api_key="sk-x", base_url=server.base_url, retry=FAST_RETRY)
            items = [Content.video(video)]
            if mode == "async":
                result = asyncio.run(
                    client.aembed_multimodal(items, model="qwen3-vl-embedding", dimension=256)
                )
            else:
                result = client.embed_multimodal(items, model="qwen3-vl-embedding", dimension=256)
    keys = [re.search(rb'name="key"\r\n\r\n([^\r]+)', body) for body in attempts]
    assert len(attempts) == 2 and keys[0] and keys[1] and keys[0][1] == keys[1][1]
    assert result.require_dense()[0][0] == 1.0
    assert (
        server.requests[-1]
        .json()["input"]["contents"][0]["video"]
        .startswith("oss://dashscope-instant/abc/")
    )


def test_careless_calls_are_named(client: DashScopeClient, dashscope_emulator: Emulator) -> None:
    with pytest.raises(InvalidInputError, match="non-empty list of Content or Fused"):
        client.embed_multimodal(Content.text("one"), model="qwen3-vl-embedding")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"contents\[1\]: expected a Content or Fused item"):
        client.embed_multimodal(
            [Content.text("ok"), {"image": "https://x/a.png"}],  # type: ignore[list-item]
            model="qwen3-vl-embedding",
        )
    with pytest.raises(InvalidInputError, match="unknown parameter 'dimensions'; did you mean"):
        client.embed_multimodal([Content.text("x")], model="qwen3-vl-embedding", dimensions=256)
    with pytest.raises(InvalidInputError, match="Fused part 1: expected a Content or a text"):
        Fused("title", b"raw bytes")  # type: ignore[arg-type]
    assert dashscope_emulator.stats()["requests"] == 0
    fused = Fused("title", Content.image(png("x")))
    assert pickle.loads(pickle.dumps(fused)) == fused


def test_a_server_that_ignores_fusion_gives_an_error_not_a_wrong_vector() -> None:
    two_rows = json.dumps(
        {
            "output": {
                "embeddings": [
                    {"index": 0, "type": "text", "embedding": [1.0] + [0.0] * 255},
                    {"index": 1, "type": "image", "embedding": [0.0, 1.0] + [0.0] * 254},
                ]
            },
            "usage": {"input_tokens": 1},
            "request_id": "rid-two",
        }
    ).encode()
    with hostile(lambda request, conn: conn.send(response_bytes(200, two_rows))) as server:
        client = DashScopeClient(api_key="sk-x", base_url=server.base_url, retry=FAST_RETRY)
        with pytest.raises(BadResponseError, match=r"rid-two|rows"):
            client.embed_multimodal(
                [Fused("shoe", Content.image(png("shoe")))],
                model="qwen3-vl-embedding",
                dimension=256,
            )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_told_token_budget_counts_an_image_as_the_service_bills_it(
    mode: str, dashscope_emulator: Emulator
) -> None:
    """An inline image is megabytes of base64, not tokens: counted as text it would
    exceed any per-minute budget and the call could never be sent."""
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url,
        retry=FAST_RETRY,
        tokens_per_minute=50_000,
    )
    images = [Content.image(png(f"photo {i}", pad=1024 * 1024)) for i in range(3)]
    vectors = embed(client, mode, images, model="qwen3-vl-embedding")  # one request
    assert len(vectors) == 3
    # What the next request would wait for: the three images' ~3,000 tokens of a 50,000
    # per-minute budget (counted as text, their base64 made it an 11-minute wait).
    assert client.budget.reserve(1) < 10


def test_the_openai_compatible_protocol_still_reaches_the_multimodal_endpoint(
    dashscope_emulator: Emulator,
) -> None:
    """The service has no OpenAI-compatible multimodal embedding ("Unsupported model
    qwen3-vl-embedding for OpenAI compatibility mode"); a client set to that protocol
    uses the native endpoint for these models instead of failing."""
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url,
        protocol="openai-compatible",
    )
    vectors = client.embed_multimodal([Content.text("x")], model="qwen3-vl-embedding")
    assert len(vectors.require_dense()[0]) == 2560
    assert len(dashscope_emulator.requests("/api/v1/services/embeddings/multimodal-embedding")) == 1


def test_a_pil_image_is_sent_as_the_png_it_saves_to(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    image_module = pytest.importorskip("PIL.Image")  # comes with llama-index-core
    picture = image_module.new("RGB", (8, 8), "red")
    saved = io.BytesIO()
    picture.save(saved, format="PNG")
    from_pil, from_bytes = client.embed_multimodal(
        [Content.image(picture), Content.image(saved.getvalue())], model="qwen3-vl-embedding"
    ).require_dense()
    assert from_pil == from_bytes
    (body,) = bodies(dashscope_emulator)
    assert len(body["input"]["contents"]) == 1  # the same image, sent once
