"""The demo's console: one progress line per stage, read from the stage's metrics.jsonl (fast, no subprocess)."""

import io
import json

from megatron_tulu.pipeline import (
    MetricsTail,
    StageProgress,
    _stage_total,
    format_progress,
)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def test_tail_reads_only_new_complete_records(tmp_path):
    f = tmp_path / "metrics.jsonl"
    tail = MetricsTail(f)
    assert tail.read() == []  # the stage has not written yet
    _append(f, json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')  # the second line is half-written
    assert tail.read() == [{"step": 1, "loss": 2.0}]
    _append(f, 'ss": 1.5}\nnot json\n{"no_step": 1}\n')
    assert tail.read() == [{"step": 2, "loss": 1.5}]
    assert tail.read() == []


def test_tail_of_a_resumed_stage_starts_at_the_end(tmp_path):
    f = tmp_path / "metrics.jsonl"
    _append(f, json.dumps({"step": 1}) + "\n")  # a run before the restart
    tail = MetricsTail(f)
    _append(f, json.dumps({"step": 7}) + "\n")
    assert tail.read() == [{"step": 7}]


def test_format_progress_per_stage_kind():
    assert format_progress("pretrain", 40, 400, {"loss": 1519.2, "loss_per_token": 3.2104}, 65, 125) == \
        "pretrain   40/400   10%  loss 3.210  1m05s  ETA 2m05s"
    assert format_progress("dpo", 5, 50, {"loss": 0.69312, "rewards/accuracy": 0.5}, 3, None) == \
        "dpo        5/50   10%  loss 0.6931 acc 0.50  3s"
    assert format_progress("rlvr", 2, 40, {"reward/score": 2.8125, "reward/accuracy": 0.28125, "loss": 1e-8}, 20, 3700) \
        == "rlvr       2/40    5%  reward 2.81 acc 0.28  20s  ETA 1h01m"
    assert format_progress("sft", None, 200, None, 4, None, "starting") == "sft       4s  starting"


def test_tty_line_is_rewritten_in_place_with_eta():
    out, clock = io.StringIO(), Clock()
    bar = StageProgress("sft", 100, out, tty=True, clock=clock)
    bar.render()
    assert out.getvalue() == "\r" + "sft       0s  starting"
    clock.t += 10  # start-up: not counted in the rate
    bar.update([{"step": 1, "loss_per_token": 2.0}])
    clock.t += 5
    bar.update([{"step": 11, "loss_per_token": 1.0}])  # 10 steps in 5 s: 89 steps left take 44.5 s
    bar.render()
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("sft        11/100   11%  loss 1.000  15s  ETA 44s")
    assert "\n" not in out.getvalue()
    bar.finish("sft  done")
    final = out.getvalue().split("\r")[-1]
    assert final.startswith("sft  done") and final.endswith("\n")
    assert len(final.rstrip("\n")) == len(last)  # padded over the longer line it replaces


def test_non_tty_prints_a_plain_line_every_ten_percent():
    out, clock = io.StringIO(), Clock()
    bar = StageProgress("pretrain", 40, out, tty=False, clock=clock)
    for step in range(1, 41):
        clock.t += 1
        bar.update([{"step": step, "loss_per_token": 5.0 - step / 10}])
        bar.render()  # no-op off a terminal
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [int(l.split()[1].split("/")[0]) for l in lines] == [4 * k for k in range(1, 11)]
    assert lines[-1].startswith("pretrain  40/40  100%  loss 1.000")
    # after the last step the stage still writes its checkpoint and HF export: no "ETA 0s" while it does
    assert bar.line().endswith("40s  saving checkpoint + HF export")
    assert bar.summary() == "pretrain  40/40  100%  loss 1.000  40s"


def test_stage_total_from_profile_overrides():
    assert _stage_total(["parallel.tp=2", "train.max_steps=400"]) == 400
    assert _stage_total(["optim.lr=5e-6"]) is None


def test_results_table_says_why_dpo_starts_at_zero_preference_accuracy():
    from megatron_tulu.pipeline import results_table

    text = results_table({}, {"before": 0.0, "after": 0.78})
    assert "before 0.00 (at step 0 the policy is the reference" in text and "-> after 0.78" in text
    assert "tie" not in results_table({}, {"before": 0.5, "after": 0.78})
