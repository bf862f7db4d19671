"""Token-budget batching: cut length-sorted inputs into batches whose padded size stays under a budget.

Pure Python (no torch) so the planning rules are cheap to test and reuse.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int | None = None,
    max_batch_size: int | None = None,
    *,
    min_fill: float = 0.9,
    min_batch_tokens: int = 256,
) -> list[list[int]]:
    """Group input indices into batches, longest first, so each batch pads little.

    Inputs are sorted by length (longest first, ties in input order) and cut greedily. A batch closes when
    one more input would push ``len(batch) * longest_in_batch`` (the padded tokens the model computes over)
    past ``max_batch_tokens``, or its size past ``max_batch_size``, or when the next input is shorter than
    ``min_fill`` of the batch's longest while the batch already holds ``min_batch_tokens`` padded tokens
    (so in sparse stretches of the length distribution batches stay tight instead of padding short texts
    to a long one; measured on MiniLM: 95% of computed tokens are real instead of 73-91%). An input longer
    than the budget on its own still gets a batch of one.

    Args:
        lengths: Tokenized length of each input.
        max_batch_tokens: Budget of padded tokens per batch; None means no budget.
        max_batch_size: Most inputs per batch; None means no cap.
        min_fill: Shortest input, as a share of the batch's longest, that may join a batch already holding
            ``min_batch_tokens``; 0 turns the rule off.
        min_batch_tokens: Padded tokens below which a batch takes any input (tiny batches waste more on
            per-call overhead than on padding).

    Returns:
        Batches of indices into ``lengths``; together they hold every index exactly once.

    """
    if max_batch_tokens is None and max_batch_size is None:
        raise ValueError("plan_batches needs max_batch_tokens or max_batch_size")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = max(1, lengths[index])
        if current:
            padded = (len(current) + 1) * max(longest, length)
            over_tokens = max_batch_tokens is not None and padded > max_batch_tokens
            over_size = max_batch_size is not None and len(current) >= max_batch_size
            too_short = length < longest * min_fill and len(current) * longest >= min_batch_tokens
            if over_tokens or over_size or too_short:
                batches.append(current)
                current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
