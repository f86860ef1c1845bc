"""CPU training throughput (issue 3): jaxtune's train step against a plain transformers + torch loop.

This is `benchmarks/train_throughput.py` (the harness: sides, subprocesses, shared checkpoint,
timing; see its docstring) with CPU defaults (a 4-layer, 256-wide Llama, batch 8 x seq 256, sides
torch, jax, jax-bf16) and issue 3's report: the float32 jaxtune / torch ratio in wall time and in
tokens per CPU-second, the optional forward / backward / optimizer breakdown, and a BENCHMARKS.md
row in issue 3's columns. Here `jax` computes in float32, like the torch loop.

  python benchmarks/cpu_throughput.py                     # torch, jax, jax-bf16; ratio; MD row
  python benchmarks/cpu_throughput.py --sides torch,torch-compile,jax,jax-driver --steps 10
  python benchmarks/cpu_throughput.py --breakdown         # forward / backward / optimizer split
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402 - a sibling script, not an installed module


def parse_args(argv=None):
  parser = tt.build_parser(__doc__.split("\n\n")[0], default_device="cpu")
  args = tt.parse_args(argv, parser)
  if args.device != "cpu" or args.find_max:
    parser.error("cpu_throughput measures CPUs; use benchmarks/train_throughput.py for --device "
                 "gpu and --find-max")
  return args


def report(args, summary: dict) -> None:
  results = summary["sides"]
  ok = {s: r for s, r in results.items() if "error" not in r}
  print("\nside            tok/s  tok/s(mean)  step ms(med)  CPU s/step  first step s  "
        "peak RSS MiB  vs torch (wall, CPU)  loss first -> last")
  for s, r in results.items():
    if "error" in r:
      print(f"{s:13s} failed: {r['error']}")
      continue
    print(f"{s:13s} {r['tokens_per_s']:7.0f} {r['tokens_per_s_mean']:12.0f} "
          f"{r['step_s_median'] * 1e3:13.1f} {tt.fmt(r.get('cpu_s_median'), '11.2f')} "
          f"{r['first_step_s']:13.2f} {r['peak_rss_mib']:13.0f} "
          f"{tt.fmt(r['ratio_vs_torch'], '10.2f')}x {tt.fmt(r['cpu_ratio_vs_torch'], '6.2f')}x      "
          f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}")
    if "driver_error_after_loop" in r:
      print(f"{'':13s} (driver raised after its timed loop: {r['driver_error_after_loop']})")
  if args.breakdown:
    print("\nbreakdown (median ms): forward / forward+backward / clip+update")
    for s, r in ok.items():
      b = r.get("breakdown_s")
      if b:
        print(f"  {s:13s} {b['forward'] * 1e3:8.1f} {b['forward_backward'] * 1e3:8.1f} "
              f"{b['clip_and_update'] * 1e3:8.1f}")

  jax_r = ok.get("jax")
  ratio = jax_r["ratio_vs_torch"] if jax_r else None
  cpu_ratio = jax_r["cpu_ratio_vs_torch"] if jax_r else None
  print(f"\nratio jaxtune (float32) / torch: {tt.fmt(ratio, '.2f')}x tokens/s, "
        f"{tt.fmt(cpu_ratio, '.2f')}x tokens per CPU-second  (goal >= 1.0x)")
  torch_rows = {s: r for s, r in ok.items() if s in tt.TORCH_SIDES}
  fastest = max(torch_rows, key=lambda s: torch_rows[s]["tokens_per_s"]) if torch_rows else None
  ratio_best = jax_r["tokens_per_s"] / torch_rows[fastest]["tokens_per_s"] if jax_r and fastest else None
  if fastest and fastest != "torch":
    print(f"ratio jaxtune (float32) / fastest torch row ({fastest}): {tt.fmt(ratio_best, '.2f')}x")
  summary.update(ratio_jax_vs_torch=ratio, cpu_ratio_jax_vs_torch=cpu_ratio,
                 fastest_torch_side=fastest, ratio_jax_vs_fastest_torch=ratio_best)
  tt.emit_json(args, summary)

  def tps(side):
    return tt.fmt(ok.get(side, {}).get("tokens_per_s"), ".0f")

  # The 1-minute load average before this script started: what other processes were doing (at
  # the end it mostly counts this script's own threads).
  load = summary["loadavg_start"][0]
  note = f"load avg {load:.1f} before the run" + (
    ": other processes were running" if load > 0.5 else ": quiet")
  if fastest and fastest != "torch":
    note += f"; vs fastest torch row ({fastest}, {tps(fastest)} tok/s): {tt.fmt(ratio_best, '.2f')}x"
  print("\nMarkdown row (| date | device | command | torch tok/s | jaxtune f32 tok/s | ratio | "
        "ratio per CPU-s | jaxtune bf16 tok/s | jaxtune first step s | peak RSS MiB torch / "
        "jaxtune | notes |):")
  rss = " / ".join(tt.fmt(ok.get(s, {}).get("peak_rss_mib"), ".0f") for s in ("torch", "jax"))
  print(f"| {summary['date']} | {summary['device']} | `{tt.command()}` | {tps('torch')} | "
        f"{tps('jax')} | {tt.fmt(ratio, '.2f')}x | {tt.fmt(cpu_ratio, '.2f')}x | {tps('jax-bf16')} | "
        f"{tt.fmt(jax_r['first_step_s'] if jax_r else None, '.1f')} | {rss} | {note} |")


def main(argv=None) -> dict:
  args = parse_args(argv)
  summary = {"benchmark": "cpu_throughput", **tt.measure(args)}
  report(args, summary)
  return summary


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
