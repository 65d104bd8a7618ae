/* The communicator's transports (comm.c dispatches, comm_mpi.c and cuda/comm_nccl.cu implement).
 * Internal: not installed, not seen by cffi; C and C++ (nvcc) both include it. */
#ifndef DN_COMM_H
#define DN_COMM_H

#include <stddef.h>
#include "darknet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dn_comm_ops {
    const char *transport;   /* "mpi", "nccl" */
    int device_memory;       /* 1: buffers are CUDA device pointers */
    dn_status (*allreduce_sum)(dn_comm *comm, float *buf, size_t n, void *stream);
    dn_status (*broadcast)(dn_comm *comm, void *buf, size_t bytes, int root, void *stream);
    dn_status (*barrier)(dn_comm *comm);
    void (*destroy)(dn_comm *comm);   /* frees impl, not the dn_comm */
    /* Asynchronous all-reduce (NULL when the transport has none): start one in place on buf (which must not
     * be touched until finish), let started ones advance, wait for all of them. */
    dn_status (*start_allreduce)(dn_comm *comm, float *buf, size_t n);
    dn_status (*progress)(dn_comm *comm);
    dn_status (*finish)(dn_comm *comm);
} dn_comm_ops;

struct dn_comm {
    const dn_comm_ops *ops;
    int rank, size;
    void *impl;                   /* the transport's own state */
    float *staging;               /* host copy of a device block for a host transport, grown on demand */
    size_t staging_floats;
    const dn_network *reducing;   /* the network whose update block has all-reduces in flight, or NULL */
};

/* Allocate a dn_comm for ops (impl filled by the caller). */
dn_status comm_new(const dn_comm_ops *ops, int rank, int size, void *impl, dn_comm **out);

/* Transport constructors; each exists in every build and fails with DN_E_COMM when compiled out. */
dn_status comm_mpi_create(dn_comm **out);
dn_status comm_nccl_unique_id(unsigned char *id);
dn_status comm_nccl_create(int size, int rank, const unsigned char *id, int device, dn_comm **out);

/* network.c: dn_network_train_chunk with after_layer(net, i, user) called once layer i's backward is done. */
dn_status network_train_chunk_each_layer(dn_network *net, const float *input, const float *truth, int n, float *cost,
                                         void (*after_layer)(dn_network *net, int layer, void *user), void *user);

/* Error reporting from C++ translation units (util.c's dn_fail is printf-style C). */
dn_status dn_fail(dn_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
