"""`mateo-bulk doctor`: ask the account what Mateo's docs leave open, without changing anything.

`docs/api.md` lists what is not known about Mateo's proxy: the shape of a PATCH answer,
whether `select` or `Prefer` bring a body, whether `id=in.(…)` is accepted and how long it may
be, whether a single-object answer is forced, whether a read of several ids comes back with
`count=exact`'s total, the rate-limit headers, the error body. The client copes with every
answer; doctor finds out which one this account gives, so a user can check before a big run and
the runner can start from the right batch size.

Every request doctor sends is harmless by construction: GETs, and PATCHes whose id filter names
fresh random uuids (built through `ConversationIds`, like every PATCH of mateo-bulk) that no
conversation has. A PATCH that matches nothing changes nothing, whatever its body says.

Each verdict says two things apart: whether the answer is `documented` (what Mateo's docs or
plain PostgREST promise for that question; each judge says which) and whether mateo-bulk
`copes` with it (works correctly, perhaps at a cost in requests). A finding the user should act
on (a refused token, an answer mateo-bulk does not know, one row per request) is
`action_needed`, with a `to_do`, and makes doctor exit 1.

The package, in the order a run of doctor goes: `probe` sends the requests and keeps each
`observation`; `answer_judges` and `grouping_judges` turn them into `verdict`s; `report` holds
what was found, prints it and stores the answers; `diagnosis` has the entry point, `diagnose`.
"""
