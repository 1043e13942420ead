"""The built-in plugins: the domain pattern categories as pipeline steps.

| category | plugin |
|---|---|
| classification | classify: rule-based labels |
| content processing | extract: text and metadata from text, Markdown, HTML, PDF |
| retrieval | index: feeds the full-text search projection |
| knowledge representation | relate: references between units (the graph projection adds derived-from and same-source) |
| synthesis | summarize: extractive summaries |
| lifecycle | retention: retention and tier labels that the tiering policies select on |
"""
