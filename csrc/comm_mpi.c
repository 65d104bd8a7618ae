/* MPI transport of the communicator: host buffers, MPI_COMM_WORLD's ranks. Built with DN_MPI (the Makefile
 * defines it when it finds MPI); without it the constructor reports how to get it. */
#include "comm.h"
#include "internal.h"

#ifdef DN_MPI
#include <limits.h>
#include <mpi.h>

/* MPI is process-wide state: count the communicators this library made, finalise MPI after the last one if
 * this library initialised it. (The one piece of global state besides the log callback; MPI itself is
 * global.) Calls come from one thread at a time. */
static int mpi_users;
static int mpi_initialised_here;

/* MPI counts are ints: larger buffers go in pieces. */
#define MPI_PIECE ((size_t)1 << 30)

typedef struct mpi_state {
    MPI_Comm world;            /* a duplicate of MPI_COMM_WORLD */
    MPI_Request *requests;     /* all-reduces started and not yet finished */
    int n_requests, cap;
} mpi_state;

static dn_status mpi_error(int code, const char *call)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    text[len] = '\0';
    return dn_fail(DN_E_COMM, "%s failed: %s", call, len ? text : "unknown MPI error");
}

static dn_status mpi_allreduce_sum(dn_comm *comm, float *buf, size_t n, void *stream)
{
    (void)stream;
    mpi_state *m = comm->impl;
    for (size_t off = 0; off < n; off += MPI_PIECE) {
        size_t count = n - off < MPI_PIECE ? n - off : MPI_PIECE;
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)count, MPI_FLOAT, MPI_SUM, m->world);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allreduce");
    }
    return DN_OK;
}

static dn_status mpi_broadcast(dn_comm *comm, void *buf, size_t bytes, int root, void *stream)
{
    (void)stream;
    mpi_state *m = comm->impl;
    for (size_t off = 0; off < bytes; off += MPI_PIECE) {
        size_t count = bytes - off < MPI_PIECE ? bytes - off : MPI_PIECE;
        int rc = MPI_Bcast((char *)buf + off, (int)count, MPI_BYTE, root, m->world);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Bcast");
    }
    return DN_OK;
}

static dn_status mpi_barrier(dn_comm *comm)
{
    mpi_state *m = comm->impl;
    int rc = MPI_Barrier(m->world);
    return rc == MPI_SUCCESS ? DN_OK : mpi_error(rc, "MPI_Barrier");
}

static dn_status mpi_start_allreduce(dn_comm *comm, float *buf, size_t n)
{
    mpi_state *m = comm->impl;
    for (size_t off = 0; off < n; off += MPI_PIECE) {
        if (m->n_requests == m->cap) {
            int cap = m->cap ? 2 * m->cap : 16;
            MPI_Request *grown = realloc(m->requests, (size_t)cap * sizeof *grown);
            if (!grown) return dn_fail(DN_E_NOMEM, "out of memory for %d MPI requests", cap);
            m->requests = grown;
            m->cap = cap;
        }
        size_t count = n - off < MPI_PIECE ? n - off : MPI_PIECE;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)count, MPI_FLOAT, MPI_SUM, m->world,
                                &m->requests[m->n_requests]);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Iallreduce");
        m->n_requests++;
    }
    return DN_OK;
}

/* MPI moves non-blocking collectives on only inside MPI calls: a test between layers lets them advance. */
static dn_status mpi_progress(dn_comm *comm)
{
    mpi_state *m = comm->impl;
    int done = 0;
    int rc = m->n_requests ? MPI_Testall(m->n_requests, m->requests, &done, MPI_STATUSES_IGNORE) : MPI_SUCCESS;
    return rc == MPI_SUCCESS ? DN_OK : mpi_error(rc, "MPI_Testall");
}

static dn_status mpi_finish(dn_comm *comm)
{
    mpi_state *m = comm->impl;
    int rc = m->n_requests ? MPI_Waitall(m->n_requests, m->requests, MPI_STATUSES_IGNORE) : MPI_SUCCESS;
    m->n_requests = 0;
    return rc == MPI_SUCCESS ? DN_OK : mpi_error(rc, "MPI_Waitall");
}

static void mpi_destroy(dn_comm *comm)
{
    mpi_state *m = comm->impl;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (m && !finalized) MPI_Comm_free(&m->world);
    if (m) free(m->requests);
    free(m);
    if (--mpi_users == 0 && mpi_initialised_here && !finalized) {
        MPI_Finalize();
        mpi_initialised_here = 0;
    }
}

static const dn_comm_ops mpi_ops = {
    .transport = "mpi", .device_memory = 0, .allreduce_sum = mpi_allreduce_sum, .broadcast = mpi_broadcast,
    .barrier = mpi_barrier, .destroy = mpi_destroy, .start_allreduce = mpi_start_allreduce,
    .progress = mpi_progress, .finish = mpi_finish};

dn_status comm_mpi_create(dn_comm **out)
{
    int initialised = 0, finalized = 0, rc;
    MPI_Finalized(&finalized);
    if (finalized) return dn_fail(DN_E_COMM, "MPI was already finalised in this process (it cannot start again)");
    MPI_Initialized(&initialised);
    if (!initialised) {
        int provided = 0;
        /* Collectives are called from one thread at a time (the training loop). */
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Init_thread");
        mpi_initialised_here = 1;
    }
    mpi_state *m = dn_calloc(1, sizeof *m);
    if (!m) return dn_fail(DN_E_NOMEM, "out of memory for a communicator");
    /* A duplicate: our collectives never match messages of other MPI users in the process. Errors are
     * returned instead of aborting the job, so they reach the caller with a message. */
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->world);
    if (rc != MPI_SUCCESS) {
        free(m);
        return mpi_error(rc, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(m->world, &rank);
    MPI_Comm_size(m->world, &size);
    mpi_users++;
    dn_status st = comm_new(&mpi_ops, rank, size, m, out);
    if (st) {
        dn_comm tmp = {.ops = &mpi_ops, .rank = rank, .size = size, .impl = m};
        mpi_destroy(&tmp);
    }
    return st;
}

#else

dn_status comm_mpi_create(dn_comm **out)
{
    (void)out;
    return dn_fail(DN_E_COMM, "this libdarknet.so was built without MPI (install OpenMPI or MPICH, e.g. Debian's "
                   "libopenmpi-dev, and rebuild with `make MPI=1`)");
}

#endif
