-- The queries of the job analysis (analysis.py and rules.py), over the tables of job.sql.
-- Each is run by name; `?` are its parameters, in order.  "Live" steps are those in which the
-- job ran (its processes were alive; a whole-node recording is always live).

-- name: totals  needs: steps
-- The job over its live steps.
SELECT count(*) AS steps, min(sec) AS first_sec, max(sec) + 1 AS end_sec,
    avg(work_cores) AS cores, sum(work_cores) AS core_steps, max(work_cores) AS peak_cores,
    avg(allowed) AS allowed,
    avg(busy) AS busy, avg(iowait) AS iowait, avg(ncpu) AS ncpu,
    max(rss) AS peak_rss, max(mem_used) AS peak_mem, avg(io_bps) AS io_bps,
    avg(read_bps) AS read_bps, avg(write_bps) AS write_bps, avg(nw_bps) AS nw_bps,
    avg(gpu_util) AS gpu_util, avg(meta_ops / nullif(live_nodes, 0)) AS meta_ops_per_node,
    avg(majflt_ps) AS majflt_ps, avg(swap_pps) AS swap_pps,
    count(*) FILTER (WHERE swap_pps >= ?) / count(*) AS swap_share
FROM job_sec WHERE live AND (work_cores IS NOT NULL OR gpu_util IS NOT NULL);

-- name: nodes  needs: steps
-- Each node: what it had, and what the job did with it over the node's live steps.
SELECT n.node, n.label, n.host, n.allowed, n.memory, count(s.work_cores) AS steps,
    avg(s.work_cores) AS cores, max(s.work_cores) AS peak_cores, avg(s.busy) AS busy,
    avg(s.iowait) AS iowait, avg(s.steal) AS steal, max(s.rss) AS peak_rss,
    max(s.mem_used) AS peak_mem, max(s.mem_total) AS mem_total, avg(s.io_bps) AS io_bps,
    avg(s.nw_bps) AS nw_bps, avg(s.gpu_util) AS gpu_util, max(s.gpus) AS gpus,
    min(s.sec) AS first_sec, max(s.sec) + 1 AS end_sec,
    avg(s.dstate / nullif(s.procs, 0)) AS dstate_share, max(s.swap_used) AS peak_swap
FROM nodes n LEFT JOIN node_sec s ON s.node = n.node AND s.live
GROUP BY ALL ORDER BY n.node;

-- name: last_busy  needs: steps
-- The step after which each node no longer did a tenth of its usual work (its end of work).
WITH u AS (SELECT node, avg(work_cores) AS usual FROM node_sec WHERE live GROUP BY node)
SELECT s.node, max(s.sec) + 1 AS end_work
FROM node_sec s JOIN u USING (node)
WHERE s.live AND s.work_cores >= 0.1 * u.usual AND u.usual > 0
GROUP BY s.node ORDER BY s.node;

-- name: cores  needs: cores
-- Per logical CPU of each node: its busy share over the run.
SELECT node, cpu, busy_s / nullif(total_s, 0) AS busy_share FROM cores ORDER BY node, cpu;

-- name: series  needs: steps
-- The job's per-step series, for the timeline, phases and the rules that look at time.
SELECT sec, live, work_cores, allowed, busy, iowait, io_bps, read_bps, write_bps, nw_bps,
    gpu_util, rss, mem_used, dstate, majflt_ps, swap_pps, live_nodes, active_cores
FROM job_sec ORDER BY sec;

-- name: heatmap  needs: steps
-- Node x time matrices, the steps averaged over buckets of ? steps, as one row per node and
-- one list per metric (null where the node has no sample in a bucket); ? buckets in all.
WITH b AS (
    SELECT node, sec // ?1 AS bucket,
        round(avg(work_cores / nullif(allowed, 0)) * 100, 1) AS cpu_pct,
        round(avg(mem_used / nullif(mem_total, 0)) * 100, 1) AS mem_pct,
        round(avg(io_bps)) AS io_bps, round(avg(nw_bps)) AS nw_bps,
        round(avg(gpu_util), 1) AS gpu_pct
    FROM node_sec WHERE sec >= 0 GROUP BY ALL
), grid AS (
    SELECT n.node, r.range AS bucket FROM nodes n, range(?2) r
)
SELECT grid.node, list(b.cpu_pct ORDER BY grid.bucket), list(b.mem_pct ORDER BY grid.bucket),
    list(b.io_bps ORDER BY grid.bucket), list(b.nw_bps ORDER BY grid.bucket),
    list(b.gpu_pct ORDER BY grid.bucket)
FROM grid LEFT JOIN b USING (node, bucket) GROUP BY grid.node ORDER BY grid.node;

-- name: phase_stats  needs: steps
-- The job in each phase (table `phase_span`: phase, start_sec, end_sec).
SELECT p.phase, avg(j.work_cores) AS cores, avg(j.active_cores) AS active_cores,
    avg(j.allowed) AS allowed,
    avg(j.read_bps) AS read_bps, avg(j.write_bps) AS write_bps, avg(j.nw_bps) AS nw_bps,
    avg(j.gpu_util) AS gpu_util, max(j.rss) AS peak_rss, avg(j.iowait) AS iowait
FROM phase_span p JOIN job_sec j ON j.sec >= p.start_sec AND j.sec < p.end_sec
WHERE j.work_cores IS NOT NULL
GROUP BY p.phase ORDER BY p.phase;

-- name: siblings  needs: procs
-- Processes with the same parent on a node that ran side by side (the ranks of a launcher,
-- the workers of a pool: each sampled alive at once with another) and how their CPU times
-- compare.  A script's commands run one after the other: they are not compared.
WITH side AS (
    SELECT p.* FROM procs p
    WHERE p.cpu_s > 0 AND EXISTS (
        SELECT 1 FROM procs o
        WHERE o.node = p.node AND o.ppid = p.ppid AND o.pid <> p.pid AND o.cpu_s > 0
            AND o.first_ms <= p.last_ms AND p.first_ms <= o.last_ms)
), g AS (
    SELECT node, ppid, count(*) AS n, max(cpu_s) AS max_cpu, avg(cpu_s) AS mean_cpu,
        sum(cpu_s) AS total_cpu, arg_max(pid, cpu_s) AS busiest, arg_min(pid, cpu_s) AS idlest,
        min(cpu_s) AS min_cpu
    FROM side GROUP BY node, ppid HAVING count(*) >= 2
)
SELECT node, ppid, n, max_cpu, mean_cpu, min_cpu, total_cpu, busiest, idlest,
    total_cpu / (SELECT sum(cpu_s) FROM procs) AS share
FROM g ORDER BY total_cpu DESC;

-- name: ranks  needs: procs
-- The ranks of an MPI job (the rank on its processes' rows), across the nodes: CPU time, and
-- the call-stack samples of its processes, in all and inside communication libraries (the
-- pattern, ?): a rank that waits in MPI spins there, so its CPU time does not show the wait.
WITH p AS (SELECT node, pid, rank, cpu_s FROM procs WHERE rank IS NOT NULL),
s AS (
    SELECT p.rank, sum(st.samples) AS samples,
        coalesce(sum(st.samples) FILTER (WHERE regexp_matches(st.stack, ?)), 0) AS comm
    FROM pstacks st JOIN p USING (node, pid) GROUP BY p.rank
), c AS (
    SELECT rank, sum(cpu_s) AS cpu_s, count(*) AS procs, min(node) AS node,
        count(DISTINCT node) AS nodes
    FROM p GROUP BY rank
)
SELECT c.rank, c.cpu_s, c.procs, c.node, c.nodes, coalesce(s.samples, 0) AS samples,
    coalesce(s.comm, 0) AS comm
FROM c LEFT JOIN s USING (rank) ORDER BY c.rank;

-- name: regression  needs: steps
-- A straight line through the job's resident memory over the middle 80 % of its live steps.
WITH s AS (
    SELECT sec, coalesce(rss, mem_used) AS m FROM job_sec WHERE live AND coalesce(rss, mem_used) > 0
), b AS (SELECT min(sec) AS lo, max(sec) AS hi FROM s)
SELECT regr_slope(m, sec) AS slope, regr_intercept(m, sec) AS intercept, regr_r2(m, sec) AS r2,
    min(sec) AS first_sec, max(sec) AS last_sec, count(*) AS n
FROM s, b WHERE sec >= lo + 0.1 * (hi - lo) AND sec <= hi - 0.1 * (hi - lo);

-- name: catastrophe  needs: steps
-- TACC Stats' 'catastrophe': for every split step (not in the first or last 10 % of the live
-- run), the mean activity after it over the mean before it; the smallest ratio.
WITH s AS (
    SELECT sec, coalesce(work_cores, 0) AS a,
        row_number() OVER (ORDER BY sec) AS i, count(*) OVER () AS n,
        sum(coalesce(work_cores, 0)) OVER (ORDER BY sec) AS cum,
        sum(coalesce(work_cores, 0)) OVER () AS total
    FROM job_sec WHERE live
), r AS (
    SELECT sec, i, n, (total - cum + a) / (n - i + 1) AS after, (cum - a) / (i - 1) AS before
    FROM s WHERE i > 1 AND i >= 1 + 0.1 * n AND i <= 0.9 * n
)
SELECT r.sec, after / nullif(before, 0) AS ratio, before, after, (n - i + 1) / n AS tail_share,
    (SELECT avg(active_cores) FROM job_sec j WHERE j.live AND j.sec >= r.sec) AS tail_active
FROM r WHERE before > 0 ORDER BY ratio, r.sec LIMIT 1;

-- name: gpus  needs: gpu
-- Each GPU of each node: busy share and memory over the run.
SELECT node, gpu, avg(util) AS util, max(util) AS peak_util, max(mem_used) AS peak_mem,
    max(mem_total) AS mem_total, avg(power_w) AS power_w, count(*) AS samples
FROM gpu GROUP BY node, gpu ORDER BY node, gpu;

-- name: counters  needs: ctr
-- perf stat events over the run: total count and the share of time they were counted.
SELECT event, sum(total) AS total, avg(running_pct) AS running_pct, count(DISTINCT node) AS nodes
FROM ctr GROUP BY event ORDER BY event;

-- name: counter_nodes  needs: ctr
-- The same per node (for bandwidth per node): events matching a pattern, per second.
SELECT node, sum(counted) / nullif(max(seconds), 0) AS per_s
FROM ctr WHERE regexp_matches(event, ?) GROUP BY node ORDER BY node;

-- name: counter_events  needs: ctr
-- Each event matching a pattern on each node: the unit perf printed it in, and per second.
SELECT node, event, any_value(unit) AS unit, sum(counted) / nullif(max(seconds), 0) AS per_s
FROM ctr WHERE regexp_matches(event, ?) GROUP BY node, event ORDER BY node, event;

-- name: stack_total  needs: stacks
SELECT coalesce(sum(samples), 0) FROM stack_sec;

-- name: stack_share  needs: stacks
-- Share of the call-stack samples whose stack holds a frame matching a pattern.
WITH a AS (SELECT stack, sum(samples) AS n FROM stack_sec GROUP BY stack)
SELECT coalesce(sum(n) FILTER (WHERE regexp_matches(stack, ?)), 0) / nullif(sum(n), 0) FROM a;

-- name: hotspots  needs: stacks
-- Self (the leaf frame) and total (anywhere in the stack, once per stack) samples per
-- function, in the steps [?, ?).
WITH agg AS (
    SELECT stack, sum(samples) AS samples FROM stack_sec WHERE sec >= ? AND sec < ?
    GROUP BY stack
), s AS (SELECT string_split(stack, ';') AS f, samples FROM agg),
self AS (SELECT f[-1] AS fn, sum(samples) AS n FROM s GROUP BY fn),
tot AS (SELECT fn, sum(samples) AS n FROM
    (SELECT unnest(list_distinct(f)) AS fn, samples FROM s) GROUP BY fn)
SELECT tot.fn, coalesce(self.n, 0) AS self_n, tot.n AS total_n
FROM tot LEFT JOIN self USING (fn)
ORDER BY self_n DESC, total_n DESC, tot.fn LIMIT ?;

-- name: stacks_all  needs: stacks
-- Every distinct stack with its samples (for the flame graph).
SELECT stack, sum(samples) AS samples FROM stack_sec GROUP BY stack ORDER BY samples DESC, stack;

-- name: ib  needs: ib
-- Each direction of the links judged on its own (a link is full when either direction is:
-- one-way traffic at the link rate is saturation, though it is half of rx + tx over 2 links).
WITH r AS (
    SELECT rx_bps / nullif(link_bps, 0) AS rx, tx_bps / nullif(link_bps, 0) AS tx, link_bps,
        wait_ps
    FROM ib WHERE rx_bps IS NOT NULL OR tx_bps IS NOT NULL
)
SELECT avg(greatest(rx, tx)) AS link_share, avg(rx) AS rx_share, avg(tx) AS tx_share,
    count(*) FILTER (WHERE greatest(rx, tx) >= ?) / nullif(count(*), 0) AS saturated_share,
    count(*) FILTER (WHERE rx >= ?) / nullif(count(*), 0) AS rx_saturated_share,
    count(*) FILTER (WHERE tx >= ?) / nullif(count(*), 0) AS tx_saturated_share,
    avg(link_bps) AS link_bps, avg(wait_ps) AS wait_ps
FROM r;
