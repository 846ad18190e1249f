"""The one constrained decoder, shared by serving and eval (imported by both; it imports neither).

`engine` (batched decode loop), `grammar` (xgrammar masks and the closing budget), `coverage` (which JSON-Schema
keywords the grammar enforces), `validity` (did an answer keep the response_format's promise).
"""
