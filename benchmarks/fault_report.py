"""Run the fault-injection suite and the bad-input tests; record the figures.

    python benchmarks/fault_report.py

Runs tests/pipe/run/test_faults.py (slow ones included), tests/pipe/run/test_resume_or_refuse.py
(the trust cases of issue 8: changed data, foreign directories, half-made and
damaged stores, lock races, plans too large for memory or disk) and the worker-kill test of
tests/pipe/run/test_cluster.py, the object-store cases (tests/pipe/store/test_object_stores.py,
on a moto S3 server and on local disk) and the cluster failures
(tests/pipe/run/test_cluster_failures.py) with $DIFFOPS_FAULT_REPORT set, counts the bad-input
tests (API, spec, CLI) that passed, and writes the ``faults`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

from report import HERE, write_section

ROOT = os.path.dirname(HERE)
BAD_INPUT_TESTS = [
    "tests/core/test_errors.py",
    "tests/core/test_layout.py::test_non_float_leaves_are_refused",
    "tests/core/test_layout.py::test_empty_tree_is_refused",
    "tests/core/test_layout.py::test_non_array_leaf_is_refused",
    "tests/core/test_plan.py::test_parse_bytes_rejects",
    "tests/core/test_plan.py::test_parse_bytes_type",
    "tests/core/test_views.py::test_wrong_shape_says_what_to_pass",
    "tests/pipe/run/test_embedded.py::test_bad_arguments",
    "tests/pipe/run/test_embedded.py::test_store_of_another_computation_is_refused",
    "tests/cli/test_commands.py::test_spec_errors_are_one_line_naming_the_field",
    "tests/cli/test_commands.py::test_missing_spec_file_and_store",
    "tests/core/test_sparse_trust.py::test_sparsity_of_the_wrong_type_is_one_line",
    "tests/core/test_sparse_trust.py::test_a_hand_made_sparsity_with_too_few_colours_is_one_line",
    "tests/core/test_sparse_trust.py::test_spectrum_of_a_scipy_sparse_matrix_is_one_line",
    "tests/core/test_sparse_trust.py::test_a_variance_that_overflows_says_so",
    "tests/core/test_sparse_trust.py::test_a_nan_in_one_row_is_refused_by_name",
]


def pytest(args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    match = re.search(r"(\d+) passed", proc.stdout)
    failed = re.search(r"(\d+) failed", proc.stdout)
    return int(match.group(1)) if match else 0, int(failed.group(1)) if failed else 0, proc


def main():
    report = tempfile.mktemp(suffix=".jsonl")
    passed, failed, proc = pytest(
        [
            "tests/pipe/run/test_faults.py",
            "tests/pipe/run/test_resume_or_refuse.py",
            "tests/pipe/run/test_cluster.py::test_worker_killed_mid_task_run_completes_bitwise",
            "tests/pipe/store/test_sparse_results.py",  # sparse stores: damage, resume
            "tests/cli/test_sparse_commands.py::test_edited_sparsity_metadata_is_refused_in_one_line",
            "tests/core/test_sparse_trust.py::test_one_dropped_entry_of_a_chosen_size_is_refused",
            "tests/pipe/store/test_object_stores.py",  # S3 (moto) beside local disk
            "tests/pipe/run/test_cluster_failures.py",  # every worker gone, scheduler killed
        ],
        {"DIFFOPS_FAULT_REPORT": report},
    )
    rows = [json.loads(line) for line in open(report)] if os.path.exists(report) else []
    bad_passed, bad_failed, _ = pytest(BAD_INPUT_TESTS)
    injected = sum(r["injected"] for r in rows)
    survived = sum(r["injected"] for r in rows if r["survived"])
    lost = sum(r["data_lost"] for r in rows)
    lines = ["| fault | injected | survived | entries lost |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r['fault']} | {r['injected']} | {'yes' if r['survived'] else 'NO'} | "
        f"{r['data_lost']} |"
        for r in rows
    ]
    lines.append(f"| **total** | **{injected}** | **{survived}** | **{lost}** |")
    body = (
        "### Fault injection\n\n" + "\n".join(lines) + "\n\n"
        f"Fault tests: {passed} passed, {failed} failed. Bad inputs (API, spec, CLI), each "
        f"with its message checked: {bad_passed} cases passed, {bad_failed} failed."
    )
    write_section("faults", body, "python benchmarks/fault_report.py")
    print(body)
    if failed or bad_failed:
        print(proc.stdout[-3000:], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
