"""What the recall tasks give a model that recalls nothing: the expected accuracy of two shortcuts on
their validation streams, beside the chance accuracy the tables print. The README's figures:

    python tests/data/recall_shortcuts.py
    # mqar (recall preset: 8 pairs): 0.340, a value of the context not yet answered (chance 0.125)
    # icr v16: 0.375, v64: 0.215; noisy_icr f0.2: 0.395, f0.5: 0.438: the value seen most often so far

Both use no key: the first knows which tokens are the context's values and that each key is asked
once (MQAR); the second counts the values before the answer (the battery's icr cells repeat keys, so
a repeated key's value is the most frequent one). Ties are guessed uniformly (expected accuracy).
Beside the data tests (not collected by pytest: a few seconds of counting, no assertion).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from attnlab.data.config import ICRConfig, MQARConfig, NoisyICRConfig
from attnlab.data.synthetic import ICRTask, MQARTask, NoisyICRTask

SEQUENCES = 4000


def unanswered_value(task: MQARTask, seq_len: int) -> float:
    accuracies = []
    for i in range(SEQUENCES):
        tokens, scored = task.example(0, "val", i, seq_len)
        values, answered = set(tokens[1:2 * task.options.num_pairs:2].tolist()), set()
        for position in np.flatnonzero(scored):
            left, target = values - answered, int(tokens[position + 1])
            accuracies.append(1 / len(left) if target in left else 0.0)
            answered.add(target)
    return float(np.mean(accuracies))


def most_frequent_value(task: ICRTask, values: range, seq_len: int) -> float:
    accuracies = []
    for i in range(SEQUENCES):
        tokens, scored = task.example(0, "val", i, seq_len)
        for position in np.flatnonzero(scored):
            seen = Counter(int(t) for t in tokens[:position + 1] if int(t) in values)
            top = max(seen.values())
            tied = [value for value, count in seen.items() if count == top]
            accuracies.append(1 / len(tied) if int(tokens[position + 1]) in tied else 0.0)
    return float(np.mean(accuracies))


if __name__ == "__main__":
    mqar = MQARTask(MQARConfig(vocab_size=64, num_pairs=8))
    print(f"mqar (8 pairs): {unanswered_value(mqar, 32):.3f} (chance {mqar.chance_acc:.3f})")
    for vocab in (16, 64):
        icr = ICRTask(ICRConfig(vocab_size=vocab))
        print(f"icr v{vocab}: {most_frequent_value(icr, range(vocab // 2, vocab), 32):.3f} "
              f"(chance {icr.chance_acc:.3f})")
    for noise in (0.2, 0.5):
        noisy = NoisyICRTask(NoisyICRConfig(frac_noise=noise))
        values = range(noisy.n_symbols // 2, noisy.n_symbols)
        print(f"noisy_icr f{noise}: {most_frequent_value(noisy, values, 32):.3f} (chance {noisy.chance_acc:.3f})")
