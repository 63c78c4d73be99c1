"""Helpers for the portal's tests and benchmark (issue 15): headless Chromium driven by
selenium with Debian's chromium and chromium-driver, HTTPS requests that trust the test CA,
and a look at screenshots (a plot drew something: colours, not a blank box)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import shutil
import ssl
import time
from pathlib import Path
from typing import Any

from tests.conftest import need_tool

CHROMIUM_HINT = "apt install chromium chromium-driver (make test installs them)"


def spki_pin(cert_pem: Path) -> str:
    """Chromium's --ignore-certificate-errors-spki-list value for exactly this certificate
    (the test CA is not in the browser's store; this trusts the one server key, nothing more)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def browser(profile: Path, server_cert: Path | None = None) -> Any:
    """A headless Chromium (selenium) with a fresh profile, logging the console."""
    chromium = shutil.which("chromium") or need_tool("chromium", CHROMIUM_HINT)
    driver_path = need_tool("chromedriver", CHROMIUM_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(a)
    if server_cert is not None:
        opts.add_argument(f"--ignore-certificate-errors-spki-list={spki_pin(server_cert)}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    profile.mkdir(parents=True, exist_ok=True)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(60)
    return drv


def console_errors(drv: Any) -> list[str]:
    """The console's errors since the last call (Chromium hands each entry out once)."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def wait(drv: Any, cond: Any, timeout: float = 90.0, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(cond, message=what)


def _gone(element: Any) -> bool:
    """The element's document is gone: selenium's staleness_of, but for what chromedriver may
    answer in the middle of the swap ("Node with given id does not belong to the document",
    seen in CI) where it otherwise says the element is stale."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise
    return False


def navigate(drv: Any, action: Any, url_has: str | None = None, timeout: float = 180.0) -> None:
    """Do `action` (a click or submit that loads a page) and wait until the new page has
    loaded: the old document gone, the new one complete (and its URL containing `url_has`)."""
    old = drv.find_element("tag name", "html")
    action()
    wait(drv, lambda _: _gone(old), timeout, "the page to go")
    wait(
        drv,
        lambda d: (
            d.execute_script("return document.readyState") == "complete"
            and (url_has is None or url_has in d.current_url)
        ),
        timeout,
        f"the page {url_has or ''}",
    )


def sign_in(drv: Any, base: str, token: str, who: str) -> None:
    """Sign in to the portal at `base` with a person's token, as they would on /login."""
    from selenium.webdriver.common.by import By

    drv.get(base + "/login")
    drv.find_element(By.ID, "token").send_keys(token)
    navigate(drv, drv.find_element(By.ID, "login-form").submit)
    wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "#nav .who"), what="signed in")
    assert who in drv.find_element(By.CSS_SELECTOR, "#nav .who").text


def drawn(png: bytes) -> dict[str, float]:
    """How much of a screenshot is drawn: the share of pixels that are not background
    (near-white), of those that are coloured (not grey: plot data, not axes and text), and
    the number of distinct colours."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((max(1, img.width // 2), max(1, img.height // 2)))
    raw = img.tobytes()
    px = list(zip(raw[0::3], raw[1::3], raw[2::3], strict=True))
    n = len(px) or 1
    ink = sum(1 for r, g, b in px if min(r, g, b) < 235)
    colour = sum(1 for r, g, b in px if max(r, g, b) - min(r, g, b) > 40)
    return {"ink": ink / n, "colour": colour / n, "colours": len(set(px))}


class Https:
    """Requests to the portal over HTTPS trusting the test CA, from a chosen source address."""

    def __init__(self, port: int, ca: Path | None, source: str = "127.0.0.1"):
        self.port = port
        self.source = source
        self.ctx = ssl.create_default_context(cafile=str(ca)) if ca else None

    def get(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        method: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if self.ctx is not None:
            con: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1",
                self.port,
                context=self.ctx,
                timeout=120,
                source_address=(self.source, 0),
            )
        else:
            con = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=120, source_address=(self.source, 0)
            )
        try:
            con.request(
                method or ("POST" if body is not None else "GET"),
                path,
                body=body,
                headers=headers or {},
            )
            r = con.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            con.close()

    def json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, _, body = self.get(path, headers)
        return status, json.loads(body)


def wait_port_file(path: Path, key: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            doc = json.loads(path.read_text())
            if key in doc:
                return int(doc[key])
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no {key} in {path} after {timeout} s")
        time.sleep(0.05)


BOTTLENECKS = [
    "io_wait_bound",
    "low_cpu_utilization",
    "memory_pressure",
    "network_bound",
    "load_imbalance",
    "gpu_underused",
    "metadata_storm",
]


def write_jobs(path: Path, n: int, seed: int = 1, start: float = 1.7e9) -> list[dict[str, Any]]:
    """`n` jobs of a year of a site, as the collector writes the table meta/jobs (the schema of
    para/collector/catalog.py: base columns, then the analyzer's features for 70 % of them):
    600 users in 60 accounts, 5 partitions, sizes and durations spread as on real clusters
    (most jobs small and short, a few wide and long).  Returns the rows."""
    import random

    import pyarrow as pa

    from para.collector import dataset

    rnd = random.Random(seed)
    users = [f"u{i:03d}" for i in range(600)]
    account = {u: f"acct{rnd.randrange(60):02d}" for u in users}
    parts = ["cpu", "gpu", "bigmem", "debug", "long"]
    apps = ["lammps", "gromacs", "vasp", "python", "wrf", "cp2k", "openfoam", "namd"]
    rows: list[dict[str, Any]] = []
    t = start
    for i in range(n):
        t += rnd.expovariate(1 / 30.0)
        u = rnd.choice(users)
        nodes = min(512, max(1, int(rnd.paretovariate(1.2))))
        dur = min(7 * 86400.0, rnd.lognormvariate(7.0, 1.5))
        analysed = rnd.random() < 0.7
        row: dict[str, Any] = {
            "job_id": str(1_000_000 + i),
            "cluster": "default",
            "scheduler": "slurm",
            "user": u,
            "name": f"{rnd.choice(apps)}-{rnd.randrange(100)}",
            "hosts": [f"cn{(i * 7 + k) % 4096:04d}" for k in range(min(nodes, 8))],
            "nodes": nodes,
            "start": int(t * 1000),
            "end": int((t + dur) * 1000),
            "info": json.dumps(
                {"account": account[u], "partition": rnd.choice(parts), "ended": True}
            ),
            "analysis_version": 1 if analysed else None,
            "duration_s": round(dur, 1) if analysed else None,
            "cpu_util_pct": round(rnd.uniform(1, 100), 1) if analysed else None,
            "peak_rss_bytes": float(rnd.randrange(1 << 20, 1 << 38)) if analysed else None,
            "gpu_util_pct": round(rnd.uniform(0, 100), 1)
            if analysed and rnd.random() < 0.3
            else None,
            "bottlenecks": rnd.sample(BOTTLENECKS, rnd.randrange(3)) if analysed else None,
            "worst_severity": rnd.choice(["high", "medium", "low"]) if analysed else None,
            "top_function": rnd.choice(["dgemm_", "MPI_Wait", "fft3d", "memcpy"])
            if analysed
            else None,
        }
        if analysed and not row["bottlenecks"]:
            row["worst_severity"] = None
        rows.append(row)
    ts = pa.timestamp("ms", tz="UTC")
    cols = {
        "job_id": pa.string(),
        "cluster": pa.string(),
        "scheduler": pa.string(),
        "user": pa.string(),
        "name": pa.string(),
        "hosts": pa.list_(pa.string()),
        "nodes": pa.int64(),
        "start": ts,
        "end": ts,
        "info": pa.string(),
        "analysis_version": pa.int64(),
        "duration_s": pa.float64(),
        "cpu_util_pct": pa.float64(),
        "peak_rss_bytes": pa.float64(),
        "gpu_util_pct": pa.float64(),
        "bottlenecks": pa.list_(pa.string()),
        "worst_severity": pa.string(),
        "top_function": pa.string(),
    }
    table = pa.table({k: pa.array([r[k] for r in rows], typ) for k, typ in cols.items()})
    dataset.overwrite(path, table)
    return rows
