"""A small residual network of `tf.compat.v1.layers`, for resnet_style.py.

Stages of residual blocks (two 3x3 convolutions with batch normalization,
and a 1x1 projection on the shortcut where the shape changes), global
average pooling and a dense classifier. Batch normalization puts its
moving-statistics updates in `tf.GraphKeys.UPDATE_OPS`.
"""

import tensorflow.compat.v1 as tf


def _batch_norm(inputs, training, momentum, zero_gamma=False, name=None):
  return tf.layers.batch_normalization(
      inputs, momentum=momentum, epsilon=1e-5, training=training,
      gamma_initializer=(tf.zeros_initializer() if zero_gamma
                         else tf.ones_initializer()),
      name=name)


def _conv(inputs, filters, kernel_size, strides=1, name=None):
  return tf.layers.conv2d(
      inputs, filters, kernel_size, strides=strides, padding="same",
      use_bias=False, kernel_initializer=tf.variance_scaling_initializer(),
      name=name)


def residual_block(inputs, filters, strides, training, bn_momentum, name):
  """conv-bn-relu-conv-bn plus the (projected) input, then relu.

  The block's last batch norm starts with gamma 0, so each block begins as
  the identity.
  """
  with tf.variable_scope(name):
    shortcut = inputs
    if strides != 1 or inputs.shape[-1] != filters:
      shortcut = _conv(inputs, filters, 1, strides, name="projection")
      shortcut = _batch_norm(shortcut, training, bn_momentum,
                             name="projection_bn")
    net = _conv(inputs, filters, 3, strides, name="conv_a")
    net = tf.nn.relu(_batch_norm(net, training, bn_momentum, name="bn_a"))
    net = _conv(net, filters, 3, name="conv_b")
    net = _batch_norm(net, training, bn_momentum, zero_gamma=True,
                      name="bn_b")
    return tf.nn.relu(net + shortcut)


def residual_network(images, training, num_classes, stage_filters=(16, 32),
                     blocks_per_stage=1, bn_momentum=0.9):
  """Logits [batch, num_classes] for NHWC `images`.

  Args:
    images: float images, [batch, height, width, channels].
    training: whether batch norm uses (and updates) batch statistics.
    num_classes: width of the logits.
    stage_filters: filters of each stage; every stage after the first
      halves the resolution.
    blocks_per_stage: residual blocks in each stage.
    bn_momentum: batch norm's moving-average momentum.
  """
  with tf.variable_scope("resnet"):
    net = _conv(images, stage_filters[0], 3, name="stem")
    net = tf.nn.relu(_batch_norm(net, training, bn_momentum, name="stem_bn"))
    for stage, filters in enumerate(stage_filters):
      for block in range(blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        net = residual_block(net, filters, strides, training, bn_momentum,
                             name=f"stage{stage}_block{block}")
    net = tf.reduce_mean(net, axis=[1, 2], name="global_pool")
    return tf.layers.dense(
        net, num_classes,
        kernel_initializer=tf.random_normal_initializer(stddev=0.01),
        name="classifier")
