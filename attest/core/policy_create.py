"""A node-class policy made from a known-good node (``umec policy create --from-node``), as
``keylime-policy create`` makes one from a machine (pure: values in, YAML out).

The verifier keeps, with each *trusted* verdict, the PCR values that quote authenticated
(:func:`quoted_pcrs`, in ``attest_nodes.last_verdict["pcrs"]``): only PCRs the quote covered,
never values the agent sent beyond it. :func:`policy_from_pcrs` turns them into a policy that
pins every one of them to exactly that value. The result is a draft for a human to review
(drop PCRs that change on every boot, add allowed alternatives) and then sign
(``umec policy sign``): it is never applied by itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from attest.core.policy import DIGEST_SIZES, AppraisalPolicy, PolicyInvalid


def quoted_pcrs(pcr_values: Mapping[str, Mapping[int, bytes]],
                quoted: Mapping[str, frozenset[int]]) -> dict[str, dict[str, str]]:
    """bank -> {index: hex} for the PCRs the quote covered (JSON-ready: string keys)."""
    return {bank: {str(i): pcr_values[bank][i].hex() for i in sorted(indices)
                   if i in pcr_values.get(bank, {})}
            for bank, indices in sorted(quoted.items()) if bank in pcr_values}


def _checked(stored: object) -> dict[str, dict[int, str]]:
    """The stored values, re-validated (they come from a database row)."""
    if not isinstance(stored, Mapping) or not stored:
        raise PolicyInvalid("no quoted PCR values are stored for this node")
    pcrs: dict[str, dict[int, str]] = {}
    for bank, values in stored.items():
        if bank not in DIGEST_SIZES or not isinstance(values, Mapping) or not values:
            raise PolicyInvalid(f"stored PCR bank {bank!r} is unusable")
        try:
            pcrs[bank] = {int(i): str(v) for i, v in values.items()}
        except (TypeError, ValueError):
            raise PolicyInvalid(f"stored PCR bank {bank!r} has a non-integer index") from None
    return pcrs


def policy_from_pcrs(node_class: str, stored: object, *, version: int,
                     description: str) -> str:
    """A policy YAML pinning every stored PCR to its value; checked by the policy parser."""
    pcrs = _checked(stored)
    doc = {"name": node_class, "description": description,
           "selection": {bank: sorted(values) for bank, values in pcrs.items()},
           "pcrs": {bank: {i: [values[i]] for i in sorted(values)}
                    for bank, values in pcrs.items()},
           "version": version}
    text = yaml.safe_dump(doc, sort_keys=False, width=120)
    AppraisalPolicy.from_yaml(text)  # raises PolicyInvalid naming the bad key
    return text
