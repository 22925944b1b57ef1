# Launches the Autobahn|Testsuite's `wstest` (Python 2.7 only) from the folder
# pip installed it into with `--target`: python2.7 autobahn-wstest.py DIR ARGS...
import site
import sys

site.addsitedir(sys.argv.pop(1))

from autobahntestsuite import wstest  # noqa: E402

wstest.run()
