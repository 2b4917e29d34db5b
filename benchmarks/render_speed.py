"""How fast the picture-book world draws: scenes per second at 64, 128 and 224 px, one process and
two workers, and the whole writer (describe + draw + PNG + JSONL) with two workers."""
import multiprocessing
import random
import tempfile
import time

from tinyvlm.world import render, sample_scene, write_world

N = 1000


def _render_all(args):
    seeds, size = args
    for s in seeds:
        render(sample_scene(random.Random(s)), size)
    return len(seeds)


def rate(fn) -> float:
    t = time.perf_counter()
    fn()
    return N / (time.perf_counter() - t)


def main():
    print(f"{'size':>5} | {'render 1 proc':>14} | {'render 2 workers':>16} | {'write_world 2 workers':>21}")
    print("-" * 66)
    with multiprocessing.Pool(2) as pool:
        for size in (64, 128, 224):
            one = rate(lambda: _render_all((range(N), size)))
            two = rate(lambda: sum(pool.map(_render_all, [(range(k, N, 2), size) for k in (0, 1)])))
            with tempfile.TemporaryDirectory() as d:
                full = rate(lambda: write_world(d, N, size=size, progress=False, workers=2))
            print(f"{size:>5} | {one:>10.0f} /s | {two:>12.0f} /s | {full:>17.0f} /s")
    print("(scenes/s; render includes sampling the scene)")


if __name__ == "__main__":
    main()
