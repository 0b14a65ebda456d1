// libedit (Debian: libedit-dev): line editing and history for `kvtierctl chat`, through its
// readline-compatible interface.
#include <stdio.h>
#include <editline/readline.h>
