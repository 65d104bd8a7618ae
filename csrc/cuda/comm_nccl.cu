/* NCCL transport of the communicator: CUDA device buffers, one rank per GPU. Self-contained (no dependence on
 * the CUDA backend's files): it takes device pointers and an optional cudaStream_t passed as void *.
 * Compiled into GPU builds with NCCL (`make GPU=1 NCCL=1`, DN_NCCL defined); empty without DN_NCCL. */
#ifdef DN_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "../comm.h"

static_assert(sizeof(ncclUniqueId) == DN_NCCL_UNIQUE_ID_BYTES, "ncclUniqueId size changed");

namespace {

struct nccl_state {
    ncclComm_t comm;
    cudaStream_t stream;   /* the communicator's own stream, used when the caller passes none */
    int device;
};

dn_status cuda_error(cudaError_t e, const char *call, int device)
{
    return dn_fail(DN_E_COMM, "%s on cuda:%d failed: %s", call, device, cudaGetErrorString(e));
}

dn_status nccl_error(ncclResult_t r, const char *call, ncclComm_t comm, int device)
{
    const char *detail = comm ? ncclGetLastError(comm) : NULL;
    return dn_fail(DN_E_COMM, "%s on cuda:%d failed: %s%s%s", call, device, ncclGetErrorString(r),
                   detail && *detail ? ": " : "", detail && *detail ? detail : "");
}

/* Wait for the collective just enqueued on stream; a peer's failure shows up as an asynchronous error. */
dn_status finish(nccl_state *s, cudaStream_t stream, const char *call)
{
    cudaError_t e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) return cuda_error(e, "cudaStreamSynchronize", s->device);
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(s->comm, &async);
    if (r != ncclSuccess) return nccl_error(r, "ncclCommGetAsyncError", s->comm, s->device);
    if (async != ncclSuccess) return nccl_error(async, call, s->comm, s->device);
    return DN_OK;
}

dn_status select_device(nccl_state *s)
{
    cudaError_t e = cudaSetDevice(s->device);
    return e == cudaSuccess ? DN_OK : cuda_error(e, "cudaSetDevice", s->device);
}

dn_status nccl_allreduce_sum(dn_comm *comm, float *buf, size_t n, void *stream)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    dn_status st = select_device(s);
    if (st) return st;
    cudaStream_t use = stream ? static_cast<cudaStream_t>(stream) : s->stream;
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, s->comm, use);
    if (r != ncclSuccess) return nccl_error(r, "ncclAllReduce", s->comm, s->device);
    return finish(s, use, "ncclAllReduce");
}

dn_status nccl_broadcast(dn_comm *comm, void *buf, size_t bytes, int root, void *stream)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    dn_status st = select_device(s);
    if (st) return st;
    cudaStream_t use = stream ? static_cast<cudaStream_t>(stream) : s->stream;
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, s->comm, use);
    if (r != ncclSuccess) return nccl_error(r, "ncclBroadcast", s->comm, s->device);
    return finish(s, use, "ncclBroadcast");
}

/* NCCL has no barrier: an all-reduce of one float does the job. */
dn_status nccl_barrier(dn_comm *comm)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    dn_status st = select_device(s);
    if (st) return st;
    float *one = NULL;
    cudaError_t e = cudaMalloc(reinterpret_cast<void **>(&one), sizeof(float));
    if (e != cudaSuccess) return cuda_error(e, "cudaMalloc", s->device);
    e = cudaMemsetAsync(one, 0, sizeof(float), s->stream);
    if (e != cudaSuccess) {
        cudaFree(one);
        return cuda_error(e, "cudaMemsetAsync", s->device);
    }
    st = nccl_allreduce_sum(comm, one, 1, NULL);
    cudaFree(one);
    return st;
}

void nccl_destroy(dn_comm *comm)
{
    nccl_state *s = static_cast<nccl_state *>(comm->impl);
    if (!s) return;
    cudaSetDevice(s->device);
    if (s->comm) ncclCommDestroy(s->comm);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

/* No asynchronous all-reduce yet: overlapping it with the backward pass needs the CUDA backend's compute
 * stream (an event after each bucket's last layer, the all-reduce queued behind it on the NCCL stream). */
const dn_comm_ops nccl_ops = {"nccl", 1, nccl_allreduce_sum, nccl_broadcast, nccl_barrier, nccl_destroy,
                              NULL, NULL, NULL};

}  // namespace

extern "C" dn_status comm_nccl_unique_id(unsigned char *id)
{
    ncclUniqueId uid;
    ncclResult_t r = ncclGetUniqueId(&uid);
    if (r != ncclSuccess) return nccl_error(r, "ncclGetUniqueId", NULL, -1);
    memcpy(id, &uid, sizeof uid);
    return DN_OK;
}

extern "C" dn_status comm_nccl_create(int size, int rank, const unsigned char *id, int device, dn_comm **out)
{
    nccl_state *s = static_cast<nccl_state *>(calloc(1, sizeof(nccl_state)));
    if (!s) return dn_fail(DN_E_NOMEM, "out of memory for a communicator");
    s->device = device;
    dn_comm tmp = {&nccl_ops, rank, size, s, NULL, 0, NULL};
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    dn_status st = select_device(s);
    if (st) goto fail;
    {
        cudaError_t e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) {
            st = cuda_error(e, "cudaStreamCreateWithFlags", device);
            goto fail;
        }
        ncclResult_t r = ncclCommInitRank(&s->comm, size, uid, rank);
        if (r != ncclSuccess) {
            s->comm = NULL;
            st = nccl_error(r, "ncclCommInitRank", NULL, device);
            goto fail;
        }
    }
    if ((st = comm_new(&nccl_ops, rank, size, s, out))) goto fail;
    return DN_OK;
fail:
    nccl_destroy(&tmp);
    return st;
}
#endif  /* DN_NCCL */
