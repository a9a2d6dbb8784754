"""eval_metrics: eval tensors out of each replica, metric_fn on the host."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness.loops import eval_metrics


def _values(tensors):
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.local_variables_initializer())
    return session.run(tensors)


@pytest.mark.parametrize("keyed", [True, False])
def test_replicas_tensors_are_concatenated_and_metric_fn_gets_them(keyed):
  labels = [tf.constant([[1.0], [2.0]]), tf.constant([[3.0], [4.0]])]
  counts = [tf.constant(2.0), tf.constant(5.0)]  # Scalars count as [1].
  seen = {}

  def metric_fn(labels, count):
    seen["shapes"] = (labels.shape.as_list(), count.shape.as_list())
    return {"mean_label": tf.compat.v1.metrics.mean(labels),
            "count": tf.compat.v1.metrics.mean(count)}

  per_replica = ([{"labels": l, "count": c} for l, c in zip(labels, counts)]
                 if keyed else [[l, c] for l, c in zip(labels, counts)])
  metrics = eval_metrics.EvalMetrics(metric_fn, per_replica[0])
  out = metrics.outfeed(per_replica)
  names = (["metric/count", "metric/labels"] if keyed
           else ["metric/arg0", "metric/arg1"])
  assert sorted(out) == names
  label_name = "metric/labels" if keyed else "metric/arg0"
  count_name = "metric/count" if keyed else "metric/arg1"
  np.testing.assert_array_equal(_values(out[label_name]), [[1], [2], [3], [4]])
  np.testing.assert_array_equal(_values(out[count_name]), [2, 5])
  # Host side: metric_fn sees one step's values with static shapes, and
  # its metrics update once per step.
  stacked = {name: tf.compat.v1.placeholder(value.dtype,
                                            [None] + value.shape.as_list())
             for name, value in out.items()}
  stacked["loss"] = tf.compat.v1.placeholder(tf.float32, [None])
  host = eval_metrics.HostMetrics(stacked, metrics)
  assert seen["shapes"] == ([4, 1], [2])
  outfeed = {label_name: np.array([[[1], [2], [3], [4]]] * 2, np.float32),
             count_name: np.array([[2, 5], [2, 5]], np.float32),
             "loss": np.array([1.0, 3.0], np.float32)}
  assert _updated(host, outfeed, 2) == {"loss": 2.0, "mean_label": 2.5,
                                        "count": 3.5}


def _updated(host, outfeed, count):
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.local_variables_initializer())
    host.after_create_session(session, None)
    host.update(outfeed, count)
    return session.run(host.values)


def test_without_eval_metrics_the_mean_loss():
  host = eval_metrics.HostMetrics(
      {"loss": tf.compat.v1.placeholder(tf.float32, [None])}, None)
  assert _updated(host, {"loss": np.array([1.0, 2.0, 9.0])}, 2) == {
      "loss": 1.5}  # The loop ran 2 steps.


def test_metrics_update_once_per_step_as_tpuestimators_did():
  """A metric of each step's batch (its largest label; a reshape by the
  batch size) has the value TPUEstimator gave: the mean over steps, not the
  largest of all steps' rows together."""
  seen = {}

  def metric_fn(labels):
    seen["size"] = tf.size(labels, out_type=tf.float32)  # Needs a shape.
    per_pair = tf.reshape(labels, [2, 2])  # By the (static) batch size.
    return {"batch_max": tf.compat.v1.metrics.mean(tf.reduce_max(labels)),
            "pair_sum": tf.compat.v1.metrics.mean(
                tf.reduce_sum(per_pair, axis=1))}

  metrics = eval_metrics.EvalMetrics(metric_fn,
                                     [tf.constant([[0.0], [0.0]])])
  host = eval_metrics.HostMetrics(
      {"metric/arg0": tf.compat.v1.placeholder(tf.float32, [None, 4, 1]),
       "loss": tf.compat.v1.placeholder(tf.float32, [None])}, metrics)
  steps = np.array([[[1], [2], [3], [4]], [[10], [20], [30], [40]]],
                   np.float32)
  values = _updated(host, {"metric/arg0": steps,
                           "loss": np.zeros([2], np.float32)}, 2)
  assert values["batch_max"] == (4 + 40) / 2
  assert values["pair_sum"] == np.mean([3, 7, 30, 70])
  assert seen["size"].shape.as_list() == []


@pytest.mark.parametrize("result, message", [
    ({"acc": 0.5}, r"must return \{name: \(value, update_op\)\}; 'acc' is "
     r"0.5"),
    ({"loss": None}, "may not define 'loss'"),
])
def test_bad_metric_fn_results_are_clear(result, message):
  if "loss" in result:
    result = {"loss": tf.compat.v1.metrics.mean(tf.constant([1.0]))}
  metrics = eval_metrics.EvalMetrics(lambda x: result, [tf.constant([1.0])])
  with pytest.raises(ValueError, match=message):
    metrics.build({"metric/arg0": tf.constant([1.0])})


@pytest.mark.parametrize("returned", [None, [("accuracy", 1.0)], 3.0])
def test_a_metric_fn_that_returns_no_dict_is_a_clear_error(returned):
  metrics = eval_metrics.EvalMetrics(lambda labels: returned,
                                     [tf.constant([1.0])])
  with pytest.raises(TypeError, match=r"`eval_metrics` metric_fn must "
                     r"return \{name: \(value, update_op\)\}.*it returned "
                     + re.escape(repr(returned))):
    metrics.build({"metric/arg0": tf.constant([1.0])})
