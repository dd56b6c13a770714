"""The CEO digest: yesterday's figures of one tenant, three insights on them through the LLM
gate, stored once per (tenant, day) as a notification card for its Admins and e-mailed.

- :mod:`bizosctl.digest.figures`: the aggregates, in one round trip to the tenant's database.
- :mod:`bizosctl.digest.insights`: the answer's schema, the prompt and the offline rules.
- :mod:`bizosctl.digest.run`: make (or find) one tenant's digest; ``--all`` fans out.
- :mod:`bizosctl.digest.jobs`: the ``digest.run`` job the scheduler and ``--background`` defer.
"""
