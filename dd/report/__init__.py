"""Reports on what the stages wrote: curves, image histories and tables of distillation runs and buffers.

    from dd.report import make_report
    make_report(["runs/mtt-digits-ipc1"])          # -> runs/mtt-digits-ipc1/report/{report.md,report.html,curves.png}
"""

from dd.report.build import make_report

__all__ = ["make_report"]
