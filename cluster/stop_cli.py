"""`evolve stop`: end runs submitted as Ray jobs (`ray job submit -- evolve run ...`) cleanly.

Ray's job supervisor sends the run's driver SIGTERM, which `evolve run` takes as the end
of the run: each loop is stopped, the learners checkpoint and summary.json is written.
The supervisor waits RAY_JOB_STOP_WAIT_TIME_S (set on the head: ray_cluster.yaml sets 120;
Ray's default is 3 s, too short for that) before it SIGKILLs.
"""

from __future__ import annotations

import time

from cluster.errors import UserError

RUN_COMMANDS = ("evolve run", "evolve pretrain")
LIVE = ("PENDING", "RUNNING")
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def running_runs(client) -> list:
    """The live jobs whose entrypoint is an Evolve run."""
    return [j for j in client.list_jobs()
            if str(j.status).rsplit(".", 1)[-1] in LIVE and any(c in (j.entrypoint or "") for c in RUN_COMMANDS)]


def stop_runs(address: str | None, job_id: str | None = None, wait_s: float = 180.0, say=print) -> int:
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address or DEFAULT_DASHBOARD)
    except Exception as exc:  # ConnectionError, or Ray's own for a dashboard that does not answer
        raise UserError(f"cannot reach the Ray job server at {address or DEFAULT_DASHBOARD}: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    jobs = running_runs(client)
    if job_id is not None:
        jobs = [j for j in jobs if job_id in (j.submission_id, j.job_id)]
    if not jobs:
        raise UserError("no running evolve job" + (f" {job_id!r}" if job_id else "") + " to stop")
    for job in jobs:
        say(f"evolve: stopping job {job.submission_id} ({job.entrypoint})")
        client.stop_job(job.submission_id)
    deadline = time.monotonic() + wait_s
    pending = {j.submission_id for j in jobs}
    while pending and time.monotonic() < deadline:
        for sid in list(pending):
            status = str(client.get_job_status(sid)).rsplit(".", 1)[-1]
            if status not in LIVE:
                say(f"evolve: job {sid} {status.lower()}")
                pending.discard(sid)
        if pending:
            time.sleep(1.0)  # polling the job server on a deadline
    if pending:
        raise UserError(f"jobs still running after {wait_s:.0f}s: {', '.join(sorted(pending))}")
    return 0
