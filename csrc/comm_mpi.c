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
    MPI_Comm *world = comm->impl;
    for (size_t off = 0; off < n; off += MPI_PIECE) {
        size_t count = n - off < MPI_PIECE ? n - off : MPI_PIECE;
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)count, MPI_FLOAT, MPI_SUM, *world);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allreduce");
    }
    return DN_OK;
}

static dn_status mpi_broadcast(dn_comm *comm, void *buf, size_t bytes, int root, void *stream)
{
    (void)stream;
    MPI_Comm *world = comm->impl;
    for (size_t off = 0; off < bytes; off += MPI_PIECE) {
        size_t count = bytes - off < MPI_PIECE ? bytes - off : MPI_PIECE;
        int rc = MPI_Bcast((char *)buf + off, (int)count, MPI_BYTE, root, *world);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Bcast");
    }
    return DN_OK;
}

static dn_status mpi_barrier(dn_comm *comm)
{
    MPI_Comm *world = comm->impl;
    int rc = MPI_Barrier(*world);
    return rc == MPI_SUCCESS ? DN_OK : mpi_error(rc, "MPI_Barrier");
}

static void mpi_destroy(dn_comm *comm)
{
    MPI_Comm *world = comm->impl;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (world && !finalized) MPI_Comm_free(world);
    free(world);
    if (--mpi_users == 0 && mpi_initialised_here && !finalized) {
        MPI_Finalize();
        mpi_initialised_here = 0;
    }
}

static const dn_comm_ops mpi_ops = {"mpi", 0, mpi_allreduce_sum, mpi_broadcast, mpi_barrier, mpi_destroy};

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
    MPI_Comm *world = dn_calloc(1, sizeof *world);
    if (!world) return dn_fail(DN_E_NOMEM, "out of memory for a communicator");
    /* A duplicate: our collectives never match messages of other MPI users in the process. Errors are
     * returned instead of aborting the job, so they reach the caller with a message. */
    rc = MPI_Comm_dup(MPI_COMM_WORLD, world);
    if (rc != MPI_SUCCESS) {
        free(world);
        return mpi_error(rc, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(*world, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(*world, &rank);
    MPI_Comm_size(*world, &size);
    mpi_users++;
    dn_status st = comm_new(&mpi_ops, rank, size, world, out);
    if (st) {
        dn_comm tmp = {&mpi_ops, rank, size, world, NULL, 0};
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
