from fastecho.includes.fe cimport fe_server


cdef class Engine:
    cdef fe_server *_server
    cdef bint _started

    cdef fe_server *_live(self) except NULL
