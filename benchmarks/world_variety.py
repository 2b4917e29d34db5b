"""How varied the picture-book world's words are, over 1,000 scenes."""
from pathlib import Path

from tinyvlm.world import make_scene_record, split_sentences, words
from tinyvlm.world.describe import abstract

N = 1000


def main():
    vocab = set((Path(__file__).parents[1] / "tinyvlm/world/vocab.txt").read_text().split())
    records = [make_scene_record(i) for i in range(N)]
    rows = []
    for name in ("short", "long"):
        texts = [t for r in records for t in r.extra[name]]
        toks = [w for t in texts for w in words(t)]
        sentences = [s for t in texts for s in split_sentences(t)]
        rows.append((name, len(texts), len(set(texts)), len({abstract(words(s)) for s in sentences}),
                     len(set(toks)) / len(toks), len(set(toks))))
    everything = {w for r in records for t in r.extra["short"] + r.extra["long"]
                  + [q["question"] + " " + q["answer"] for q in r.extra["questions"]] for w in words(t)}
    print(f"{'desc':>5} | {'texts':>6} | {'distinct':>8} | {'sentence patterns':>17} | {'type/token':>10} | {'words used':>10}")
    print("-" * 74)
    for name, n, distinct, patterns, ttr, used in rows:
        print(f"{name:>5} | {n:>6} | {distinct:>8} | {patterns:>17} | {ttr:>10.4f} | {used:>10}")
    print(f"vocabulary: {len(everything)} of {len(vocab)} words in vocab.txt used (descriptions + Q&A)")
    qtypes = sorted({q["type"] for r in records for q in r.extra["questions"]})
    print(f"questions per scene: {sum(len(r.extra['questions']) for r in records) / N:.1f}, types: {', '.join(qtypes)}")
    print(f"negatives per scene: {sum(len(r.extra['negatives']) for r in records) / N:.1f}")


if __name__ == "__main__":
    main()
