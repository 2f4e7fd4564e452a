"""Rendering results: console tables, JSON, Markdown, SARIF and the self-contained HTML page. Imports the
result models of the stages below; decides nothing."""
