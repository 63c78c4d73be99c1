-- Per-second series derived from the raw tables of one .para file.
-- Counters become rates over the time between two samples; a counter that goes backwards
-- (device re-appeared, pid reused) yields NULL for that second instead of a bogus spike.
-- Each statement is created only if the tables it reads exist (see load.py).

-- name: node_cpu  needs: node
CREATE OR REPLACE VIEW node_cpu AS
WITH d AS (
    SELECT t,
        epoch_ms(t) / 1000.0 - lag(epoch_ms(t)) OVER w / 1000.0 AS dt,
        cpu_user - lag(cpu_user) OVER w AS user_, cpu_nice - lag(cpu_nice) OVER w AS nice,
        cpu_system - lag(cpu_system) OVER w AS system,
        cpu_idle - lag(cpu_idle) OVER w AS idle, cpu_iowait - lag(cpu_iowait) OVER w AS iowait,
        cpu_irq - lag(cpu_irq) OVER w AS irq, cpu_softirq - lag(cpu_softirq) OVER w AS softirq,
        cpu_steal - lag(cpu_steal) OVER w AS steal,
        ctxt - lag(ctxt) OVER w AS ctxt, intr - lag(intr) OVER w AS intr,
        forks - lag(forks) OVER w AS forks,
        procs_running, procs_blocked, load1
    FROM node WINDOW w AS (ORDER BY t)
), s AS (
    -- guest time is already inside user and nice
    SELECT *, user_ + nice + system + idle + iowait + irq + softirq + steal AS total FROM d
    WHERE dt > 0
)
SELECT t, dt,
    100.0 * user_ / total AS user_pct, 100.0 * nice / total AS nice_pct,
    100.0 * system / total AS system_pct, 100.0 * iowait / total AS iowait_pct,
    100.0 * (irq + softirq) / total AS irq_pct, 100.0 * steal / total AS steal_pct,
    100.0 * idle / total AS idle_pct,
    100.0 * (total - idle - iowait) / total AS busy_pct,
    ctxt / dt AS ctxt_per_s, intr / dt AS intr_per_s, forks / dt AS forks_per_s,
    procs_running, procs_blocked, load1
FROM s WHERE total > 0;

-- name: core_busy  needs: cpu
CREATE OR REPLACE VIEW core_busy AS
WITH d AS (
    SELECT t, cpu,
        ("user" + nice + system + irq + softirq + steal)
          - lag("user" + nice + system + irq + softirq + steal) OVER w AS busy,
        ("user" + nice + system + idle + iowait + irq + softirq + steal)
          - lag("user" + nice + system + idle + iowait + irq + softirq + steal) OVER w AS total,
        iowait - lag(iowait) OVER w AS iowait
    FROM cpu WINDOW w AS (PARTITION BY cpu ORDER BY t)
)
SELECT t, cpu, 100.0 * busy / total AS busy_pct, 100.0 * iowait / total AS iowait_pct
FROM d WHERE total > 0 AND busy >= 0;

-- name: node_memory  needs: memory
CREATE OR REPLACE VIEW node_memory AS
SELECT t, mem_total, mem_total - mem_available AS mem_used, mem_available,
    mem_cached + mem_buffers AS mem_cache, mem_dirty, swap_total - swap_free AS swap_used,
    (pgmajfault - lag(pgmajfault) OVER w)
      / (epoch_ms(t) / 1000.0 - lag(epoch_ms(t)) OVER w / 1000.0) AS majfault_per_s,
    (pswpin + pswpout - lag(pswpin + pswpout) OVER w)
      / (epoch_ms(t) / 1000.0 - lag(epoch_ms(t)) OVER w / 1000.0) AS swap_pages_per_s
FROM memory WINDOW w AS (ORDER BY t);

-- name: disk_rates  needs: disk
CREATE OR REPLACE VIEW disk_rates AS
WITH d AS (
    SELECT t, device,
        epoch_ms(t) - lag(epoch_ms(t)) OVER w AS dt_ms,
        read_bytes - lag(read_bytes) OVER w AS rb, write_bytes - lag(write_bytes) OVER w AS wb,
        reads - lag(reads) OVER w AS r, writes - lag(writes) OVER w AS wr,
        read_ms + write_ms - lag(read_ms + write_ms) OVER w AS rw_ms,
        io_ms - lag(io_ms) OVER w AS busy_ms, in_flight
    FROM disk WINDOW w AS (PARTITION BY device ORDER BY t)
)
SELECT t, device, dt_ms,
    1000.0 * rb / dt_ms AS read_bps, 1000.0 * wb / dt_ms AS write_bps,
    1000.0 * (r + wr) / dt_ms AS iops,
    least(100.0, 100.0 * busy_ms / dt_ms) AS util_pct,
    CASE WHEN r + wr > 0 THEN rw_ms / (r + wr) END AS await_ms, in_flight
FROM d WHERE dt_ms > 0 AND rb >= 0 AND wb >= 0 AND busy_ms >= 0;

-- name: net_rates  needs: net
CREATE OR REPLACE VIEW net_rates AS
WITH d AS (
    SELECT t, iface, epoch_ms(t) - lag(epoch_ms(t)) OVER w AS dt_ms,
        rx_bytes - lag(rx_bytes) OVER w AS rx, tx_bytes - lag(tx_bytes) OVER w AS tx,
        rx_packets + tx_packets - lag(rx_packets + tx_packets) OVER w AS pkts,
        rx_errs + tx_errs + rx_drop + tx_drop - lag(rx_errs + tx_errs + rx_drop + tx_drop) OVER w
          AS bad
    FROM net WINDOW w AS (PARTITION BY iface ORDER BY t)
)
SELECT t, iface, dt_ms, 1000.0 * rx / dt_ms AS rx_bps, 1000.0 * tx / dt_ms AS tx_bps,
    1000.0 * pkts / dt_ms AS packets_per_s, bad AS errors_drops
FROM d WHERE dt_ms > 0 AND rx >= 0 AND tx >= 0;

-- name: proc_rates  needs: proc
CREATE OR REPLACE VIEW proc_rates AS
WITH d AS (
    SELECT t, pid, ppid, state, rss_bytes, threads,
        epoch_ms(t) / 1000.0 - lag(epoch_ms(t)) OVER w / 1000.0 AS dt,
        utime - lag(utime) OVER w AS du, stime - lag(stime) OVER w AS ds,
        read_bytes - lag(read_bytes) OVER w AS rb, write_bytes - lag(write_bytes) OVER w AS wb,
        majflt - lag(majflt) OVER w AS majflt
    FROM proc WINDOW w AS (PARTITION BY pid ORDER BY t)
)
SELECT t, pid, ppid, state, rss_bytes, threads, dt,
    du / $ticks / dt AS user_cores, ds / $ticks / dt AS system_cores,
    rb / dt AS read_bps, wb / dt AS write_bps, majflt / dt AS majflt_per_s
FROM d WHERE dt > 0 AND du >= 0 AND ds >= 0;

-- name: job_rates  needs: proc
-- The job each second: CPU cores busy and memory summed over its processes.
CREATE OR REPLACE VIEW job_rates AS
SELECT t, sum(user_cores) AS user_cores, sum(system_cores) AS system_cores,
    sum(user_cores + system_cores) AS cores, sum(rss_bytes) AS rss_bytes,
    sum(read_bps) AS read_bps, sum(write_bps) AS write_bps, count(*) AS processes,
    sum(threads) AS threads
FROM proc_rates GROUP BY t;

-- name: gpu_series  needs: gpu
CREATE OR REPLACE VIEW gpu_series AS
SELECT t, gpu, util_gpu, util_mem, mem_used, mem_total, power_mw / 1000.0 AS power_w,
    temp_c, sm_clock_mhz
FROM gpu;

-- name: counter_rates  needs: counters
-- perf stat gives counts per interval; rates use the interval's length.
CREATE OR REPLACE VIEW counter_rates AS
SELECT t, event, value, running_pct,
    value / nullif(epoch_ms(t) / 1000.0 - lag(epoch_ms(t)) OVER w / 1000.0, 0) AS per_s
FROM counters WINDOW w AS (PARTITION BY event ORDER BY t);

-- name: ipc  needs: counters
CREATE OR REPLACE VIEW ipc AS
SELECT t, sum(value) FILTER (WHERE event LIKE '%instructions%')
        / nullif(sum(value) FILTER (WHERE event LIKE '%cycles%' AND event NOT LIKE '%ref%'
                                     AND event NOT LIKE '%stalled%'), 0) AS ipc
FROM counters GROUP BY t;
