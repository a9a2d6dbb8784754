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
  # Host side: two steps stacked, merged on one batch axis.
  stacked = {name: tf.stack([value, value]) for name, value in out.items()}
  stacked["loss"] = tf.constant([1.0, 3.0])
  values, update = eval_metrics.on_host(stacked, metrics)
  assert seen["shapes"] == ([8, 1], [4])
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.local_variables_initializer())
    session.run(update)
    assert session.run(values) == {"loss": 2.0, "mean_label": 2.5,
                                   "count": 3.5}


def test_on_host_without_eval_metrics_gives_the_mean_loss():
  values, update = eval_metrics.on_host({"loss": tf.constant([1.0, 2.0])},
                                        None)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.local_variables_initializer())
    session.run(update)
    assert session.run(values) == {"loss": 1.5}


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
