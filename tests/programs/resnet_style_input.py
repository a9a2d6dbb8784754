"""Input for resnet_style.py: synthetic images, and JPEG serving input.

`SyntheticImages(...).input_fn` is a TPUEstimator input_fn. Example i of a
split is noise drawn with the stateless seed (i, split) and label
i % num_classes, brightened in proportion to its label so that there is
something to learn; the same example every pass. Training batches shuffle,
repeat and drop the remainder; evaluation batches go through the split
once.

`jpeg_serving_input_fn(image_size)` is a serving_input_receiver_fn: a batch
of JPEG strings, decoded and resized to what the model was trained on.
"""

import tensorflow.compat.v1 as tf

from tpu_harness import estimator as tf_estimator


class SyntheticImages:
  """Generated images for one split; see the module docstring."""

  def __init__(self, is_training, image_size, num_classes, num_images):
    self.is_training = is_training
    self.image_size = image_size
    self.num_classes = num_classes
    self.num_images = num_images

  def _example(self, index):
    seed = tf.stack([index, tf.constant(0 if self.is_training else 1,
                                        tf.int64)])
    noise = tf.random.stateless_uniform(
        [self.image_size, self.image_size, 3], seed=seed, maxval=0.5)
    label = tf.cast(index % self.num_classes, tf.int32)
    image = noise + 0.5 * tf.cast(label, tf.float32) / self.num_classes
    return image, label

  def input_fn(self, params):
    """Batches of params['batch_size'] (images [b, s, s, 3], labels [b]).

    With several input hosts (params['context']), each reads its own shard.
    """
    dataset = tf.data.Dataset.range(self.num_images)
    context = params.get("context")
    if context is not None:
      _, host, num_hosts = context.current_input_fn_deployment()
      if num_hosts > 1:
        dataset = dataset.shard(num_hosts, host)
    if self.is_training:
      dataset = dataset.shuffle(self.num_images).repeat()
    dataset = dataset.map(self._example,
                          num_parallel_calls=tf.data.experimental.AUTOTUNE)
    dataset = dataset.batch(params["batch_size"], drop_remainder=True)
    return dataset.prefetch(tf.data.experimental.AUTOTUNE)


def decode_jpeg(jpeg, image_size):
  """A JPEG string to a float [image_size, image_size, 3] image in [0, 1]."""
  image = tf.io.decode_jpeg(jpeg, channels=3)
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, [image_size, image_size])
  return tf.reshape(image, [image_size, image_size, 3])


def jpeg_serving_input_fn(image_size):
  """A serving_input_receiver_fn taking a [batch] string tensor of JPEGs."""

  def serving_input_receiver_fn():
    jpegs = tf.placeholder(tf.string, shape=[None], name="jpeg_images")
    images = tf.map_fn(lambda jpeg: decode_jpeg(jpeg, image_size), jpegs,
                       fn_output_signature=tf.float32)
    return tf_estimator.export.TensorServingInputReceiver(
        features=images, receiver_tensors=jpegs)

  return serving_input_receiver_fn
