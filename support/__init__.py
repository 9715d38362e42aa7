"""Support code for the chapters. None of it is a lesson: a chapter uses it in its first cell
(the command line, one-line errors, the checks of every file it reads) or, where the lesson
needs one, for a demonstration tool.

- `cli`: the command line, one-line errors and Ctrl-C, set up once per chapter;
- `saving`: crash-safe writes for the support code itself;
- `pictures`: matplotlib where it is installed, one line saying how to get it where not;
- `untrusted_files`: what a chapter checks in a loaded model or checkpoint, beyond the file
  itself, which the inspector's own readers (`model_inspector/`) check;
- `lab_tools`: demonstration tools: a fresh process, a private folder, a harmless hostile
  file, memory probes, ranks.
"""
