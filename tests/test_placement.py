"""Whether a session may place each run's pruned graph: the graphs where
that runs more ops are told, checked against real sessions both ways."""

import logging as std_logging

import pytest
import tensorflow as tf

import tpu_harness as th
from tpu_harness._run import placement
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn

v1 = tf.compat.v1


def _counter():
  return v1.get_variable("counter", [], initializer=v1.zeros_initializer(),
                         use_resource=True)


def _loop(body, loop_vars=(0,), cond=lambda i, *rest: i < 5):
  return v1.while_loop(cond, body, list(loop_vars))


# Each builds, in the default graph, (the counter, what a run fetches).

def needed_update():
  counter = _counter()

  def body(i):
    with tf.control_dependencies([counter.assign_add(1.0)]):
      return i + 1
  return counter, _loop(body)


def unneeded_update():
  counter = _counter()

  def body(i):
    counter.assign_add(1.0)
    return i + 1
  return counter, _loop(body)


def update_in_a_branch_the_output_needs():
  counter = _counter()

  def body(i):
    def then():
      with tf.control_dependencies([counter.assign_add(1.0)]):
        return tf.constant(1)
    return i + tf.cond(i > 2, then, lambda: tf.constant(1))
  return counter, _loop(body)


def unneeded_update_in_a_branch():
  counter = _counter()

  def body(i):
    def then():
      counter.assign_add(1.0)
      return tf.constant(1)
    return i + tf.cond(i > 2, then, lambda: tf.constant(1))
  return counter, _loop(body)


def update_of_a_loop_variable_not_fetched():
  counter = _counter()

  def body(i, total):
    return i + 1, total + counter.assign_add(1.0)
  return counter, _loop(body, (0, 0.0))[0]


def update_of_a_loop_variable_the_condition_reads():
  counter = _counter()

  def body(i, total):
    return i + 1, total + counter.assign_add(1.0)
  return counter, _loop(body, (0, 0.0),
                        cond=lambda i, total: tf.logical_and(i < 5,
                                                             total > -1.0))[0]


def nested_loop_needed():
  counter = _counter()

  def body(i):
    inner = _loop(lambda k: k + tf.cast(counter.assign_add(1.0) > 0,
                                        tf.int32), cond=lambda k: k < 2)
    return i + 1 + 0 * inner
  return counter, _loop(body)


def nested_loop_unneeded():
  counter = _counter()

  def body(i):
    _loop(lambda k: k + tf.cast(counter.assign_add(1.0) > 0, tf.int32),
          cond=lambda k: k < 2)
    return i + 1
  return counter, _loop(body)


def unneeded_read():
  counter = _counter()

  def body(i):
    counter.read_value()
    with tf.control_dependencies([counter.assign_add(1.0)]):
      return i + 1
  return counter, _loop(body)


def unneeded_print():
  counter = _counter()

  def body(i):
    tf.print("step", i)
    with tf.control_dependencies([counter.assign_add(1.0)]):
      return i + 1
  return counter, _loop(body)


def branch_output_not_fetched():
  counter = _counter()
  first, _ = tf.cond(tf.constant(True),
                     lambda: (tf.constant(1.0), counter.assign_add(1.0)),
                     lambda: (tf.constant(2.0), tf.constant(0.0)))
  return counter, first


def run_depending_on_a_loop_alone():
  counter = _counter()

  def body(i, total):
    return i + 1, total + counter.assign_add(1.0)
  i, _ = _loop(body, (0, 0.0))
  with tf.control_dependencies([i.op]):
    return counter, tf.no_op()


def branch_read_through_its_output():
  counter = _counter()

  def then():
    with tf.control_dependencies([counter.assign_add(1.0)]):
      return tf.constant(1)
  return counter, tf.cond(tf.constant(True), then, lambda: tf.constant(0))


@pytest.mark.parametrize("build,alike,modes_differ", [
    (needed_update, True, False),
    (unneeded_update, False, True),
    (update_in_a_branch_the_output_needs, True, False),
    (unneeded_update_in_a_branch, False, True),
    (update_of_a_loop_variable_not_fetched, False, True),
    (update_of_a_loop_variable_the_condition_reads, True, False),
    (nested_loop_needed, True, False),
    (nested_loop_unneeded, False, True),
    (unneeded_read, True, False),  # A read changes nothing.
    (unneeded_print, False, False),  # Prints once more; the counter same.
    (branch_output_not_fetched, False, True),
    (run_depending_on_a_loop_alone, False, True),
    (branch_read_through_its_output, True, False),
], ids=lambda value: getattr(value, "__name__", str(value)))
def test_a_graph_prunes_alike_where_both_placements_run_the_same(
    build, alike, modes_differ):
  counters = []
  for pruned in (False, True):
    with tf.Graph().as_default() as graph:
      counter, fetch = build()
      init = v1.global_variables_initializer()
      reason = placement.prunes_alike(graph.as_graph_def())
      config = v1.ConfigProto(graph_options=v1.GraphOptions(
          place_pruned_graph=pruned))
      with v1.Session(config=config) as session:
        session.run(init)
        session.run(fetch)
        counters.append(float(session.run(counter)))
  assert (reason is None) == alike, reason
  # What the check is for: where the placements differ, it says so.
  assert (counters[0] != counters[1]) == modes_differ, counters
  if not alike:
    assert "runs whether or not anything needs it" in reason


def test_the_session_config_prunes_first_where_alike_and_keeps_the_rest():
  given = v1.ConfigProto(intra_op_parallelism_threads=3)
  with tf.Graph().as_default() as graph:
    needed_update()
    config = placement.session_config(given, graph)
  assert config.graph_options.place_pruned_graph
  assert config.intra_op_parallelism_threads == 3
  assert not given.graph_options.place_pruned_graph  # Not changed.
  with tf.Graph().as_default() as graph:
    needed_update()
    assert placement.session_config(None, graph).graph_options \
        .place_pruned_graph


def test_the_session_config_stays_where_not_and_the_log_says_why(caplog):
  given = v1.ConfigProto(intra_op_parallelism_threads=3)
  with tf.Graph().as_default() as graph:
    unneeded_update()
    with caplog.at_level(std_logging.INFO, logger="absl"):
      config = placement.session_config(given, graph)
  assert config is given and not config.graph_options.place_pruned_graph
  lines = [r.getMessage() for r in caplog.records
           if "places the whole graph" in r.getMessage()]
  assert len(lines) == 1 and "AssignAddVariableOp" in lines[0], lines


def test_a_config_that_prunes_first_already_is_kept():
  given = v1.ConfigProto(graph_options=v1.GraphOptions(
      place_pruned_graph=True))
  with tf.Graph().as_default() as graph:
    unneeded_update()
    assert placement.session_config(given, graph) is given


def _with_unneeded_update(features, labels, mode, params):
  """The linear model with an update that nothing it returns needs."""
  counter = v1.get_variable("unneeded", [], trainable=False,
                            initializer=v1.zeros_initializer(),
                            use_resource=True)
  counter.assign_add(1.0)
  return linear_model_fn(features, labels, mode, params)


@pytest.mark.parametrize("model_fn,whole_graph", [
    (linear_model_fn, False), (_with_unneeded_update, True)])
def test_training_runs_what_a_tf1_session_runs(tmp_path, caplog, model_fn,
                                               whole_graph):
  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path),
                                            iterations_per_loop=5),
                     train_batch_size=32)
  with caplog.at_level(std_logging.INFO, logger="absl"):
    runner.train(train_input_fn(), max_steps=10)
  reader = tf.train.load_checkpoint(str(tmp_path))
  assert reader.get_tensor("global_step") == 10
  if whole_graph:
    # As in a TF1 session (and TPUEstimator): the update never ran.
    assert reader.get_tensor("unneeded") == 0.0
  lines = [r.getMessage() for r in caplog.records
           if "places the whole graph" in r.getMessage()]
  assert bool(lines) == whole_graph, lines
