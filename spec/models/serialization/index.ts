// Request serialization: tracked and serialising requests (docs/requirements/qemu-fleecing.md §2.1).
export { serializationModel, SERIALIZATION, SERIALIZATION_BAD, DEFAULT_SERIALIZATION_PARAMS } from './model.ts';
export type { Request, RequestKind, SerializationAction, SerializationParams, SerializationState, SerializationVariant } from './model.ts';
