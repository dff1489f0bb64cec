"""`slingshot docs2qa`: a folder of documents to a question-answer training set, every pair traceable to its page.

The steps run in this order, one module each: `ingest` (files to pages), `clean` (pages to one clean text per
document), `chunk` (token-sized spans at sentence boundaries), `offline` or `teacher` (pairs from each chunk),
`pairs` (duplicates, split by document), `export` (JSONL, SQuAD, chat). `pipeline` runs them and counts.
"""
