-- The job across its nodes, from the reduced per-node tables (reduce.py, job.py).
-- Every table has `node` (0..N-1, see table `nodes`) and `t` (epoch ms); rates are already
-- per second.  Nodes sample at their own instants, so everything job-wide is put on one grid
-- of steps: sec = (t - t0) // step_ms, with the variables t0 (first sample of the job) and
-- step_ms (the longest sampling interval), set by job.py.  Statements run in file order.

-- name: node_sec  needs: steps
-- Each node, each step: its CPUs by kind (in cores), the job's processes on it, memory,
-- storage, network, GPUs and filesystem metadata.  A node's k-th sample lands on step
-- k + (its first sample's offset from t0), so clock jitter never puts two in one step.
CREATE OR REPLACE TABLE node_sec AS
SELECT steps.node,
    CASE WHEN nodes.interval * 1000 = getvariable('step_ms')
         THEN steps.k + round((nodes.first_ms - getvariable('t0')) / getvariable('step_ms'))
         ELSE round((steps.t - getvariable('t0')) / getvariable('step_ms'))
    END::BIGINT AS sec,
    steps.t, nodes.allowed, busy, usr, sys, iowait, steal, ncpu, blocked, job_cores, rss,
    job_read_bps, job_write_bps, procs, dstate, mem_used, mem_total, swap_used, majflt_ps,
    swap_pps, disk_read_bps, disk_write_bps, disk_util, net_bps, ib_bps, ib_link_bps,
    ib_wait_ps, gpu_util, gpu_mem, gpu_mem_total, gpus, meta_ops,
    -- what the job did on the node: its processes when they were sampled (none alive is
    -- none busy, unless the agent's account of the job says what its last processes used
    -- after their last look), else the node's busy CPUs (an agent's recording of a whole
    -- node) (a process's first sample has no rate yet: unknown, not idle)
    CASE WHEN NOT nodes.has_proc THEN busy
         WHEN coalesce(procs, 0) = 0 AND coalesce(job_cores, 0) <= 0 THEN 0.0
         ELSE job_cores END AS work_cores,
    -- the job is running on the node: its processes are alive or used CPU in the step (or
    -- it is a whole node)
    NOT nodes.has_proc OR coalesce(procs, 0) > 0 OR coalesce(job_cores, 0) > 0 AS live,
    coalesce(job_read_bps + job_write_bps, disk_read_bps + disk_write_bps, 0) AS io_bps,
    coalesce(net_bps, 0) + coalesce(ib_bps, 0) AS nw_bps,
    -- sampled at the step: one sample in each of its steps
    nodes.interval * 1000 = getvariable('step_ms') AS on_grid
FROM steps JOIN nodes USING (node);

-- name: job_sec  needs: steps
-- The job each step, summed over the nodes that were recording in that step.
CREATE OR REPLACE TABLE job_sec AS
WITH per AS (
    -- a node sampled at the step has one sample in each step: taken as it is (averaging
    -- 460,000 rows of one sample each was 60 % of the job's grid)
    SELECT node, sec, allowed, live, work_cores, job_cores, busy, iowait, ncpu, rss,
        mem_used, io_bps, coalesce(job_read_bps, disk_read_bps) AS read_bps,
        coalesce(job_write_bps, disk_write_bps) AS write_bps, nw_bps, gpu_util, gpu_mem,
        meta_ops, dstate, majflt_ps, swap_pps
    FROM node_sec WHERE on_grid
    UNION ALL
    -- a node sampling faster than the step has several samples in it
    SELECT node, sec, any_value(allowed) AS allowed, bool_or(live) AS live,
        avg(work_cores) AS work_cores,
        avg(job_cores) AS job_cores, avg(busy) AS busy, avg(iowait) AS iowait,
        avg(ncpu) AS ncpu, avg(rss) AS rss, avg(mem_used) AS mem_used, avg(io_bps) AS io_bps,
        avg(coalesce(job_read_bps, disk_read_bps)) AS read_bps,
        avg(coalesce(job_write_bps, disk_write_bps)) AS write_bps, avg(nw_bps) AS nw_bps,
        avg(gpu_util) AS gpu_util, avg(gpu_mem) AS gpu_mem, avg(meta_ops) AS meta_ops,
        avg(dstate) AS dstate, avg(majflt_ps) AS majflt_ps, avg(swap_pps) AS swap_pps
    FROM node_sec WHERE NOT on_grid GROUP BY node, sec
)
SELECT sec, count(*) AS nodes, sum(allowed) AS allowed, bool_or(live) AS live,
    count(*) FILTER (WHERE live) AS live_nodes, sum(work_cores) AS work_cores,
    -- the cores of the nodes doing real work: 4000 idle ranks at 0.3 % of a core each are
    -- not 12 busy cores
    coalesce(sum(work_cores) FILTER (WHERE work_cores >= 0.5), 0) AS active_cores,
    sum(job_cores) AS job_cores, sum(busy) AS busy, sum(iowait) AS iowait, sum(ncpu) AS ncpu,
    sum(rss) AS rss, sum(mem_used) AS mem_used, sum(io_bps) AS io_bps, sum(read_bps) AS read_bps,
    sum(write_bps) AS write_bps, sum(nw_bps) AS nw_bps, avg(gpu_util) AS gpu_util,
    sum(gpu_mem) AS gpu_mem, sum(meta_ops) AS meta_ops, sum(dstate) AS dstate,
    sum(majflt_ps) AS majflt_ps, sum(swap_pps) AS swap_pps
FROM per GROUP BY sec ORDER BY sec;

-- name: node_summary  needs: steps
-- Each node over the whole run: what it had and how much of it the job used.
CREATE OR REPLACE TABLE node_summary AS
WITH x AS (SELECT *, avg(work_cores) OVER (PARTITION BY node) AS usual FROM node_sec)
SELECT node, any_value(allowed) AS allowed, count(*) AS steps,
    min(sec) AS first_sec, max(sec) AS last_sec,
    avg(work_cores) AS work_cores, max(work_cores) AS peak_cores,
    avg(job_cores) AS job_cores, avg(busy) AS busy, avg(ncpu) AS ncpu,
    avg(iowait) AS iowait, avg(steal) AS steal,
    max(rss) AS peak_rss, max(mem_used) AS peak_mem, max(mem_total) AS mem_total,
    max(swap_used) AS peak_swap, avg(majflt_ps) AS majflt_ps, avg(swap_pps) AS swap_pps,
    avg(io_bps) AS io_bps, avg(nw_bps) AS nw_bps, avg(gpu_util) AS gpu_util,
    max(gpu_mem) AS peak_gpu_mem, max(gpu_mem_total) AS gpu_mem_total, max(gpus) AS gpus,
    avg(meta_ops) AS meta_ops, avg(dstate) AS dstate,
    -- the last step in which the node still did a tenth of its usual work
    max(sec) FILTER (WHERE work_cores >= 0.1 * usual) AS last_busy_sec
FROM x GROUP BY node ORDER BY node;

-- name: stack_sec  needs: stacks
-- Call stacks job-wide per step: frames root-first (the process name is not a frame).
CREATE OR REPLACE TABLE stack_sec AS
SELECT (t - getvariable('t0')) // getvariable('step_ms') AS sec, stack, sum(samples) AS samples
FROM stacks GROUP BY ALL;

-- name: wait_sec  needs: waits
-- Python threads off-CPU per step, as stack_sec: state wait (sleep, I/O, a lock, the GIL)
-- or ready (runnable, waiting for a CPU).
CREATE OR REPLACE TABLE wait_sec AS
SELECT (t - getvariable('t0')) // getvariable('step_ms') AS sec, stack, state,
    sum(samples) AS samples
FROM waits GROUP BY ALL;
