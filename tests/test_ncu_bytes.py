"""``scripts/ncu_bytes.py`` on a real Nsight Compute CSV of ``device_job.sh ncu_bytes`` (H100, 7B, chunk 128)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.ncu_bytes import against_floor

DATA = Path(__file__).parent / "data" / "ncu_bytes_128.csv"
ROOT = Path(__file__).parent.parent


def _metric(launch_id: str, name: str) -> float:
    with DATA.open() as fh:
        for row in csv.DictReader(fh):
            if row["ID"] == launch_id and row["Metric Name"] == name:
                return float(row["Metric Value"].replace(",", ""))
    raise KeyError((launch_id, name))


def test_each_kernel_once_its_last_launch_against_the_floor() -> None:
    table = against_floor(DATA, (8, 8, 8192, 256, 512)).set_index("kernel")
    # the forward ran twice before the backward (launches 0-1 and 2-3): the later launch is kept
    assert list(table.index) == [
        "fw_chunk_states_kernel",
        "fw_output_ws_kernel",
        "bw_chunk_state_grads_kernel",
        "bw_chunk_dq_kernel",
    ]
    states = table.loc["fw_chunk_states_kernel"]
    dram = _metric("2", "dram__bytes_read.sum") + _metric("2", "dram__bytes_write.sum")
    k_v = 8 * 8 * 8192 * (256 + 512) * 2  # k and v read once, bf16
    c = 8 * 8 * 64 * 256 * 512 * 2  # 64 chunk states written once
    assert states.floor_gb == pytest.approx((k_v + c) / 1e9)
    assert states.dram_gb == pytest.approx(dram / 1e9)
    assert states.us == pytest.approx(_metric("2", "gpu__time_duration.sum") / 1e3)
    assert states.dram_tb_s == pytest.approx(dram / (_metric("2", "gpu__time_duration.sum") * 1e-9) / 1e12)
    assert table.loc["bw_chunk_dq_kernel"].dram_over_floor > 1.15  # its repeated state reads miss L2


def test_bad_shape_exits_2_naming_the_parameter() -> None:
    run = subprocess.run(
        [sys.executable, "scripts/ncu_bytes.py", str(DATA), "--shape", "8,8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 2
    assert "--shape must be five integers B,NH,S,DHQK,DHHV" in run.stderr
    assert "Traceback" not in run.stderr


def test_dq_and_dk_in_one_launch_are_one_part_with_one_floor() -> None:
    from kernels.mlstm.cost import PAIR, part_name, tfla_kernel_work
    from scripts.ncu_bytes import PART_OF

    assert PART_OF["bw_dq_dk_pair_kernel"] == part_name(PAIR)
    assert "bw_dq_dk_kernel" not in PART_OF  # a launch each of dq and dk: no single floor
    (pair,) = [
        w for w in tfla_kernel_work(8, 8, 8192, 256, 512, 256, 2, "bw", one_launch=PAIR) if w.kernel == part_name(PAIR)
    ]
    assert pair.bytes / 1e9 == pytest.approx(3.24, abs=0.01)  # q, k, v, dh, C, dC read once; dq, dk written (v43)
