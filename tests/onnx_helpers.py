"""Classifiers whose labels depend on the text, for honest int8 label-agreement figures.

A randomly initialised classification head (std 0.02) gives logits of ~0.01 whose argmax is the same for
nearly every input: the tiny test BERT labels all 2,000 sample texts POSITIVE (prob margin ~0.002), so "100%
agreement" would say nothing. Here the head is *trained*: a ridge-regression probe on the frozen encoder's
pooled output, fitted to a sentiment rule on one seeded text set (``sample_texts(seed=1)``), scaled so the
logit margins spread like a fine-tuned model's (standard deviation 4), and saved. Agreement is then measured
on the export's own 2,000-text sample (seed 0), held out from the fit: labels split both ways and a few inputs
sit near the decision boundary, where quantisation noise can flip them.
"""

from __future__ import annotations

from pathlib import Path

POSITIVE_WORDS = ("great", "excellent", "wonderful", "perfect", "good", "loved", "10/10")


def sentiment_rule(text: str) -> int:
    """1 (POSITIVE) when the text holds more positive than negative words, else 0."""
    lowered = text.lower()
    positive = sum(lowered.count(w) for w in POSITIVE_WORDS)
    negative = sum(lowered.count(w) for w in ("terrible", "awful", "bad", "broken", "disappointing", "refund", "not"))
    return int(positive > negative)


def train_probe_head(model_dir: Path, *, margin_std: float = 4.0) -> Path:
    """Fit the classification head of the BERT classifier in ``model_dir`` in place (see module docstring)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prodai_cli.export import sample_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    texts = sample_texts(800, seed=1)
    targets = torch.tensor([2.0 * sentiment_rule(t) - 1.0 for t in texts])
    features = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            features.append(model.bert(**batch).pooler_output)
    x = torch.cat(features)
    mean = x.mean(dim=0)
    centred = x - mean
    ridge = 1e-2 * torch.eye(x.shape[1])
    weight = torch.linalg.solve(centred.T @ centred + ridge, centred.T @ (targets - targets.mean()))
    margins = centred @ weight
    scale = margin_std / float(margins.std())
    bias = -float(mean @ weight) * scale
    # Two logits whose difference is the probe's score: label 1 when the score is positive.
    with torch.no_grad():
        model.classifier.weight.copy_(torch.stack([-weight * scale / 2, weight * scale / 2]))
        model.classifier.bias.copy_(torch.tensor([-bias / 2, bias / 2]))
    model.save_pretrained(model_dir)
    return model_dir
