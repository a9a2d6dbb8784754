"""tpu_harness._tf_message: a TF error message in one line."""

import pytest

from tpu_harness import _tf_message as tf_message

# As TF 2.x words the error of an op run in a session (as tf.Session
# gives it), and of one defined in a tf.function (where it was defined).
SESSION_ERROR = ("Graph execution error:\n\nassertion failed: [read an "
                 "example already trained on] [1]\n\t [[{{node Assert}}]]")
FUNCTION_ERROR = """Graph execution error:

Detected at node 'IteratorGetNext' defined at (most recent call last):
  File "train.py", line 12, in <module>

  File "input.py", line 40, in input_fn

Node: 'IteratorGetNext'
corrupted record at 12
\t [[{{node IteratorGetNext}}]]"""


@pytest.mark.parametrize("message, line", [
    (SESSION_ERROR, "assertion failed: [read an example already trained "
     "on] [1]"),
    (FUNCTION_ERROR, "corrupted record at 12"),
    ("Graph execution error:\n\n  out of range  \n", "out of range"),
    ("one\ntwo", "one"),
    ("\n\n  Node: 'x'\n", "Node: 'x'"),
    ("", ""),
])
def test_the_first_line_that_says_something(message, line):
  assert tf_message.first_line(message) == line
