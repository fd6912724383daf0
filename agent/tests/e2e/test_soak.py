"""The soak (soak.py) as a test: deselected unless pytest runs with --soak (it takes
--soak-minutes, default 30). Nine agents on nine Xvnc desktops with motion, nine aiortc
viewers; every viewer must still be live at the end, and no agent may grow its RSS by more
than 25 % after the warm-up or its open fds by more than 8."""
from __future__ import annotations

import json

import pytest

import soak

pytestmark = [pytest.mark.soak]


def test_soak_nine_viewers(request, tmp_path, agent_bin):
    minutes = request.config.getoption("--soak-minutes")
    report = soak.run(minutes=minutes, viewers=9, workdir=tmp_path / "soak")
    soak.print_report(report)
    (tmp_path / "soak-report.json").write_text(json.dumps(report, indent=1))
    print(f"[soak] report: {tmp_path / 'soak-report.json'}")
    bad = [a for a in report["agents"] if not a["ok"]]
    assert report["ok"], f"soak failed: {bad or report.get('churn_failures')}"
