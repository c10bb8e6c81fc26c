declare module 'asl-validator' {
  /** asl-validator ships no types: its one function, as its README describes it. */
  export default function validator(
    definition: unknown,
    options?: { checkPaths?: boolean; checkArn?: boolean },
  ): {
    isValid: boolean;
    errors: { 'Error code': string; Message: string; path?: string }[];
    errorsText: (separator?: string) => string;
  };
}
