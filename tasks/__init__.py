"""The rules of tep (lifecycle, timers, notices, webhooks, metrics, restore...) and, in
:mod:`tasks.jobs` and :mod:`tasks.delivery`, the thin Celery tasks that call them.

Kept empty: importing any rule module (`from tasks import lifecycle`, as `tep sweep` does) must
not load Celery and the tasks' imports with it (`tep`'s start-up time, issue 13).
"""
