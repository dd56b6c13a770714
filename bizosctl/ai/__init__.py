"""The LLM gate: every model call of bizosctl goes through :func:`bizosctl.ai.gate.ask`.

``providers`` speaks to Gemini (google-genai), OpenAI-compatible endpoints (httpx) and the
offline provider; ``breaker`` keeps a failing provider out of the path; ``ledger`` records
every call in the tenant's own database and holds its cost against the tenant's budget;
``usage`` reports tokens, cost and margin.
"""

from __future__ import annotations
