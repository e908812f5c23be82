"""The site's state dir: what it holds, and the refusal to train when it was lost.

Files (``SiteIdentity.state_dir``; none ever leaves the site):

- ``trainer.safetensors``: G, D, both Adam states, the privacy accountant, the RNG states and
  the secret the DP noise and patient sampling come from (fedsynth.common.privacy.randomness);
- ``last_reply.safetensors``: the last reply sent, to resend it on a repeated request;
- ``log.jsonl``: per round the losses, patients sampled and wall time (data-dependent,
  unaccounted: they never enter a reply);
- ``site.json``: the site record, written at the site's first contact and updated once its
  trainer state is first saved: ``{"first_round": int, "trained": bool, "budget": {key:
  value}}``. ``budget`` holds the privacy settings of that first round (``BUDGET_KEYS``): the
  site's budget is FIXED then, and a later request asking for a different value of any of
  them is refused, naming the key (the server proposes, the site decides).

Why the record: a trainer without saved state starts with a new secret and an EMPTY
accountant. After a lost state dir that would silently forget the privacy the site's patients
already spent. So a site refuses to train from scratch when (a) its record says it saved a
trainer state that is now missing, or (b) it has no record at all but the server is past
round 1 (it took part before, or it joined late: it cannot tell). The operator decides:
node config ``forfeit-lost-state=true`` starts afresh, accepting that the accountant no longer
counts what the patients spent before (deployment); a simulation starts a new run directory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.client.site import SiteIdentity
from fedsynth.common.config import Config
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.io.atomic import atomic_write_json
from fedsynth.common.rundir import SITE_LAST_REPLY, SITE_LOG, SITE_RECORD, SITE_TRAINER_STATE

log = logging.getLogger(__name__)

STATE_FILE = SITE_TRAINER_STATE  # G, D, optimisers, accountant, RNG states, noise secret
REPLY_FILE = SITE_LAST_REPLY  # the last reply sent, to resend it on a repeated request
RECORD_FILE = SITE_RECORD  # the site record (see the module docstring)
LOG_FILE = SITE_LOG  # the site's own training log (losses, patients sampled, time)
FORFEIT_KEY = "forfeit-lost-state"  # node config: start afresh after a lost state dir
# The privacy settings a site fixes at its first round (train.batch_size sets the sample
# rate q = batch_size / patients).
BUDGET_KEYS = (
    "privacy.enabled", "privacy.target_epsilon", "privacy.delta", "privacy.max_grad_norm",
    "privacy.accountant", "train.batch_size",
)  # fmt: skip


class LostStateError(FedsynthError):
    """The site's trainer state (accountant, noise stream) is gone; training from scratch
    would forget the privacy its patients already spent."""


@dataclass(frozen=True)
class SiteRecord:
    first_round: int
    trained: bool  # a trainer state was saved at least once
    budget: dict[str, Any] = field(default_factory=dict)  # BUDGET_KEYS -> value, fixed


def budget_of(cfg: Config) -> dict[str, Any]:
    """The values of ``BUDGET_KEYS`` in ``cfg``."""
    values = {}
    for key in BUDGET_KEYS:
        section, name = key.split(".")
        values[key] = getattr(getattr(cfg, section), name)
    return values


def read_record(site: SiteIdentity) -> SiteRecord | None:
    path = site.state_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return SiteRecord(
            int(data["first_round"]), bool(data["trained"]), dict(data.get("budget", {}))
        )
    except (ValueError, KeyError, TypeError) as e:
        raise LostStateError(
            f"{path}: unreadable site record ({e}); restore it from a backup, or set "
            f"{FORFEIT_KEY}=true in the node config to start this site afresh"
        ) from e


def write_record(site: SiteIdentity, record: SiteRecord) -> None:
    atomic_write_json(
        site.state_dir / RECORD_FILE,
        {"first_round": record.first_round, "trained": record.trained, "budget": record.budget},
    )


def check_state(site: SiteIdentity, server_round: int, cfg: Config) -> None:
    """Refuse (LostStateError) to train from scratch when the site's state was lost, unless
    the node config says ``forfeit-lost-state=true``; refuse (ConfigError naming the key) a
    budget other than the one fixed at the site's first round; write the site record (and
    fix the budget) at first contact."""
    site.state_dir.mkdir(parents=True, exist_ok=True)
    has_state = (site.state_dir / STATE_FILE).is_file()
    record = read_record(site)
    problem = None
    if record is not None and record.trained and not has_state:
        problem = (
            f"its trainer state {site.state_dir / STATE_FILE} is missing although the site "
            f"has saved one since round {record.first_round}"
        )
    elif record is None and not has_state and server_round > 1:
        problem = (
            f"the server is at round {server_round} but {site.state_dir} holds no site "
            "state: if this site trained in an earlier round, its state was lost"
        )
    if problem is not None:
        what = (
            "the privacy accountant (what its patients already spent) and the DP noise "
            "stream; training now would restart the accountant at zero"
        )
        if not site.forfeit_lost_state:
            raise LostStateError(
                f"site {site.name} refuses to train: {problem}. Lost: {what}. Restore the "
                f"state dir, or (deployment) set {FORFEIT_KEY}=true in the node config to "
                "start afresh, forfeiting the record of past spending; a simulation starts a "
                "new run directory."
            )
        log.warning("site %s starts afresh (%s=true): %s", site.name, FORFEIT_KEY, problem)
        record = None
    budget = budget_of(cfg)
    if record is None or not record.budget:
        first = server_round if record is None else record.first_round
        trained = has_state if record is None else record.trained
        write_record(site, SiteRecord(first, trained, budget))
        log.info(
            "site %s fixes its privacy budget at round %d: %s%s", site.name, first,
            ", ".join(f"{k}={v}" for k, v in budget.items()),
            "" if site.deployed else " (simulated site: the server's config, no node-config ceiling)",
        )  # fmt: skip
        return
    check_budget_unchanged(site, record, budget)


def check_budget_unchanged(site: SiteIdentity, record: SiteRecord, budget: dict[str, Any]) -> None:
    """ConfigError naming the first key whose value differs from the fixed budget."""
    for key in BUDGET_KEYS:
        if key in record.budget and record.budget[key] != budget[key]:
            raise ConfigError(
                key,
                f"site {site.name} fixed its privacy budget at round {record.first_round} with "
                f"{key}={record.budget[key]!r}; the server now asks for {budget[key]!r}. A "
                "site's budget cannot change while its state (and accountant) lives on",
            )


def mark_trained(site: SiteIdentity) -> None:
    """Record that a trainer state now exists (after its first save)."""
    record = read_record(site)
    if record is not None and not record.trained:
        write_record(site, SiteRecord(record.first_round, True, record.budget))


def state_path(site: SiteIdentity) -> Path:
    return site.state_dir / STATE_FILE


def reply_path(site: SiteIdentity) -> Path:
    return site.state_dir / REPLY_FILE
