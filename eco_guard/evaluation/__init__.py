"""Efficacy evaluation: does the guard make flagged prompts forget, and leave the rest alone?

``metrics`` holds the measures (E1 recall, fluency, distinct ratio, multiple choice);
``evaluate`` runs a guard over forget/retain sets with the guard on and off. The
``eco-guard eval`` command and ``benchmarks/efficacy.py`` both use these, so a number in
the README and a number a user measures mean the same thing.
"""
