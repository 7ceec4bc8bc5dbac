"""The frozen backbone's feature map m: clips decoded in loader workers, the cache the features stage
writes (resumable, sharded), the sources that read it (or compute it on the fly), and the batch
loader of both training stages."""
