/* Communicator front end (argument checks, dispatch to the transport) and the network-level collectives of
 * synchronous data parallelism. */
#include <string.h>

#include "comm.h"
#include "internal.h"
#include "backend.h"

dn_status comm_new(const dn_comm_ops *ops, int rank, int size, void *impl, dn_comm **out)
{
    dn_comm *c = dn_calloc(1, sizeof *c);
    if (!c) return dn_fail(DN_E_NOMEM, "out of memory for a communicator");
    c->ops = ops;
    c->rank = rank;
    c->size = size;
    c->impl = impl;
    *out = c;
    return DN_OK;
}

/* A build without NCCL: its constructors say how to get it. */
#ifndef DN_NCCL
dn_status comm_nccl_unique_id(unsigned char *id)
{
    (void)id;
    return dn_fail(DN_E_COMM, "this libdarknet.so was built without NCCL (rebuild with `make GPU=1 NCCL=1`)");
}

dn_status comm_nccl_create(int size, int rank, const unsigned char *id, int device, dn_comm **out)
{
    (void)size; (void)rank; (void)id; (void)device; (void)out;
    return comm_nccl_unique_id(NULL);
}
#endif

DN_EXPORT int dn_comm_mpi_built(void)
{
#ifdef DN_MPI
    return 1;
#else
    return 0;
#endif
}

DN_EXPORT int dn_comm_nccl_built(void)
{
#ifdef DN_NCCL
    return 1;
#else
    return 0;
#endif
}

DN_EXPORT dn_status dn_comm_init_mpi(dn_comm **out)
{
    if (!out) return dn_fail(DN_E_ARG, "out pointer is NULL");
    *out = NULL;
    return comm_mpi_create(out);
}

DN_EXPORT dn_status dn_comm_nccl_unique_id(unsigned char *id)
{
    if (!id) return dn_fail(DN_E_ARG, "id buffer is NULL");
    return comm_nccl_unique_id(id);
}

DN_EXPORT dn_status dn_comm_init_nccl(int size, int rank, const unsigned char *id, int device, dn_comm **out)
{
    if (!out || !id) return dn_fail(DN_E_ARG, "NULL argument");
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return dn_fail(DN_E_ARG, "rank %d is not in a world of size %d", rank, size);
    if (device < 0) return dn_fail(DN_E_ARG, "NCCL needs a CUDA device index >= 0, got %d", device);
    return comm_nccl_create(size, rank, id, device, out);
}

DN_EXPORT int dn_comm_rank(const dn_comm *comm) { return comm ? comm->rank : -1; }
DN_EXPORT int dn_comm_size(const dn_comm *comm) { return comm ? comm->size : 0; }
DN_EXPORT const char *dn_comm_transport(const dn_comm *comm) { return comm ? comm->ops->transport : ""; }
DN_EXPORT int dn_comm_device_memory(const dn_comm *comm) { return comm ? comm->ops->device_memory : 0; }

DN_EXPORT dn_status dn_comm_allreduce_sum(dn_comm *comm, float *buf, size_t n, void *stream)
{
    if (!comm || (!buf && n)) return dn_fail(DN_E_ARG, "NULL communicator or buffer");
    if (n == 0) return DN_OK;
    return comm->ops->allreduce_sum(comm, buf, n, stream);
}

DN_EXPORT dn_status dn_comm_broadcast(dn_comm *comm, void *buf, size_t bytes, int root, void *stream)
{
    if (!comm || (!buf && bytes)) return dn_fail(DN_E_ARG, "NULL communicator or buffer");
    if (root < 0 || root >= comm->size)
        return dn_fail(DN_E_ARG, "broadcast root %d is not a rank of this communicator (size %d)", root, comm->size);
    if (bytes == 0) return DN_OK;
    return comm->ops->broadcast(comm, buf, bytes, root, stream);
}

DN_EXPORT dn_status dn_comm_barrier(dn_comm *comm)
{
    if (!comm) return dn_fail(DN_E_ARG, "communicator is NULL");
    return comm->ops->barrier(comm);
}

DN_EXPORT void dn_comm_free(dn_comm *comm)
{
    if (!comm) return;
    comm->ops->destroy(comm);
    free(comm->staging);
    free(comm);
}

/* ---- network-level collectives ---- */

/* Where a network's parameter and update blocks live: NULL for plain host memory. dn_network has no backend
 * field yet, so every network is on the host; once the CUDA backend is part of dn_network this returns it
 * (the staging and device paths below then apply). */
static dn_backend *network_backend(const dn_network *net) { return net->be; }

static dn_status grow_staging(dn_comm *comm, size_t n)
{
    if (comm->staging_floats >= n) return DN_OK;
    float *p = dn_calloc(n, sizeof(float));
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory for a %zu-float host staging buffer", n);
    free(comm->staging);
    comm->staging = p;
    comm->staging_floats = n;
    return DN_OK;
}

/* Runs a collective on a block of n floats that lives in be's memory (be NULL = host), copying it through
 * the host when the transport takes host memory and the block is on a device. A host block on a device
 * transport is refused: NCCL cannot read host memory. */
typedef dn_status (*block_collective)(dn_comm *comm, float *block, size_t n, int root);

static dn_status reduce_block(dn_comm *comm, float *block, size_t n, int root)
{
    (void)root;
    return comm->ops->allreduce_sum(comm, block, n, NULL);
}

static dn_status broadcast_block(dn_comm *comm, float *block, size_t n, int root)
{
    return comm->ops->broadcast(comm, block, n * sizeof(float), root, NULL);
}

static dn_status on_block(dn_comm *comm, dn_backend *be, float *block, size_t n, int root, block_collective op)
{
    int on_device = be && !be->host_memory;
    if (comm->ops->device_memory && !on_device)
        return dn_fail(DN_E_COMM, "the %s communicator works on CUDA device memory but this network is on the CPU "
                       "(load it with device=cuda:K, or use MPI for CPU training)", comm->ops->transport);
    if (!comm->ops->device_memory && on_device) {
        dn_status st = grow_staging(comm, n);
        if (st) return st;
        if ((st = be->to_host(be, comm->staging, block, n * sizeof(float)))) return st;
        if ((st = op(comm, comm->staging, n, root))) return st;
        return be->from_host(be, block, comm->staging, n * sizeof(float));
    }
    if (on_device) {
        /* The transport runs on its own stream: let the backend's queued work finish first. */
        dn_status st = be->sync(be);
        if (st) return st;
    }
    return op(comm, block, n, root);
}

static dn_status check_pair(const dn_network *net, const dn_comm *comm)
{
    if (!net || !comm) return dn_fail(DN_E_ARG, "NULL network or communicator");
    return DN_OK;
}

DN_EXPORT dn_status dn_network_allreduce_updates(dn_network *net, dn_comm *comm)
{
    dn_status st = check_pair(net, comm);
    if (st) return st;
    if (comm->reducing == net) {
        /* dn_network_train_chunk_reduce started it during the backward pass: wait for it. */
        comm->reducing = NULL;
        return comm->ops->finish(comm);
    }
    if (comm->reducing) return dn_fail(DN_E_ARG, "another network's all-reduce is in flight on this communicator");
    if ((st = dn_network_alloc_training(net))) return st;
    return on_block(comm, network_backend(net), net->updates, net->n_params, 0, reduce_block);
}

DN_EXPORT dn_status dn_network_update_replicated(dn_network *net, dn_comm *comm, float learning_rate,
                                                 float momentum, float decay, int batch_images)
{
    dn_status st = check_pair(net, comm);
    if (st) return st;
    if (batch_images < comm->size)
        return dn_fail(DN_E_ARG, "batch_images %d is fewer than the %d replicas: it counts the images of all of them",
                       batch_images, comm->size);
    if ((st = dn_network_allreduce_updates(net, comm))) return st;
    if ((st = dn_network_update(net, learning_rate, momentum, decay, batch_images))) return st;
    if (comm->rank == 0) return DN_OK;
    /* Rank 0 alone carries the momentum into the next iteration's sum. */
    dn_backend *be = network_backend(net);
    if (be) return be->memset0(be, net->updates, net->n_params * sizeof(float));
    memset(net->updates, 0, net->n_params * sizeof(float));
    return DN_OK;
}

DN_EXPORT dn_status dn_network_broadcast_params(dn_network *net, dn_comm *comm, int root)
{
    dn_status st = check_pair(net, comm);
    if (st) return st;
    if (root < 0 || root >= comm->size)
        return dn_fail(DN_E_ARG, "broadcast root %d is not a rank of this communicator (size %d)", root, comm->size);
    net->params_version++;
    return on_block(comm, network_backend(net), net->params, net->n_params, root, broadcast_block);
}

/* ---- the all-reduce overlapped with the backward pass ---- */

typedef struct overlap {
    dn_comm *comm;
    size_t unsent;       /* update block [0, unsent) not yet handed to the transport */
    size_t bucket;       /* floats per all-reduce, at least */
    dn_status st;
} overlap;

/* After layer i's backward: its slice is final, and so is everything above it. Start an all-reduce of the
 * finished part not yet sent once it holds a bucket's worth (all that is left after layer 0). */
static void reduce_finished_part(dn_network *net, int i, void *user)
{
    overlap *o = user;
    if (o->st) return;
    size_t start = net->layers[i].param_offset;
    if (o->unsent > start && (o->unsent - start >= o->bucket || i == 0)) {
        o->st = o->comm->ops->start_allreduce(o->comm, net->updates + start, o->unsent - start);
        o->unsent = start;
    } else if (o->unsent < net->n_params) {
        o->st = o->comm->ops->progress(o->comm);
    }
}

DN_EXPORT dn_status dn_network_train_chunk_reduce(dn_network *net, dn_comm *comm, const float *input,
                                                  const float *truth, int n, float *cost, size_t bucket_floats)
{
    dn_status st = check_pair(net, comm);
    if (st) return st;
    if (comm->reducing) return dn_fail(DN_E_ARG, "an all-reduce started by the last chunk is still in flight "
                                       "(dn_network_update_replicated finishes it)");
    dn_backend *be = network_backend(net);
    if (!comm->ops->start_allreduce || (be && !be->host_memory))
        return dn_network_train_chunk(net, input, truth, n, cost); /* reduced whole by update_replicated */
    if ((st = dn_network_alloc_training(net))) return st;
    overlap o = {comm, net->n_params, bucket_floats ? bucket_floats : DN_ALLREDUCE_BUCKET_FLOATS, DN_OK};
    st = network_train_chunk_each_layer(net, input, truth, n, cost, reduce_finished_part, &o);
    if (!st) st = o.st;
    if (o.unsent < net->n_params) {
        /* Something was started: on failure wait for it (the buffers must outlive it), else hand it over. */
        if (st) comm->ops->finish(comm);
        else comm->reducing = net;
    }
    return st;
}
