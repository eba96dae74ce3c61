"""One function per workflow step. The rule scripts (workflow/scripts) and the command line
(samsbench.cli) call only these, so both run the same code for the same step."""
